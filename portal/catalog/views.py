"""The catalog page: public, and the same page inside the app (prices in the organisation's
currency). Filters live in the query string; htmx swaps just the offer list.

The page's body (filters and offer list) is the same for everyone asking the same query string
in the same currency, so it is rendered once per catalog version and cached
(``portal.catalog.cache``); each request renders only the layout around it.
"""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from portal.catalog import cache as catalog_cache
from portal.catalog import selectors
from portal.catalog.filters_form import CatalogFilterForm

PAGE_SIZE = 30
TEMPLATE = "catalog/catalog.html"


def _body(request: HttpRequest, form: CatalogFilterForm, currency: str, version: int):
    """The page's body and its offer list as HTML, and until when they hold."""
    query = form.to_query()
    offers, valid_until = selectors.catalog_offers_until(currency=currency, version=version)
    page = Paginator(selectors.filter_offers(offers, query), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    rows = [
        {
            "offer": offer,
            "price": selectors.offer_price(offer, query.region),
            "per_gpu": selectors.price_per_gpu_hour(offer, query.region),
            "tflops_per_dollar": selectors.tflops_per_dollar(offer, query.region),
            "free_regions": ", ".join(
                f"{code} ({n})"
                for code, n in sorted(offer.available.items(), key=lambda kv: (-kv[1], kv[0]))
            ),
            "regions": sorted(
                ((q.region, offer.available.get(q.region, 0)) for q in offer.prices),
                key=lambda item: (-item[1], item[0]),
            ),
            # the table of prices: region, on-demand price, how many fit there now
            "price_rows": [
                (q.region, q.on_demand_per_hour, offer.available.get(q.region, 0))
                for q in offer.prices
            ],
        }
        for offer in page.object_list
    ]
    params = request.GET.copy()
    params.pop("page", None)
    context = {
        "form": form,
        "rows": rows,
        "total": len(offers),
        "page": page,
        "params": params.urlencode(),
        "currency": currency,
        "query": query,
    }
    offer_list = render_to_string(f"{TEMPLATE}#offer-list", context)
    body = render_to_string(f"{TEMPLATE}#body", {**context, "offer_list": mark_safe(offer_list)})  # noqa: S308  # nosec B308 B703 # rendered (escaped) by the template above
    return {"body": body, "offer_list": offer_list}, valid_until


def catalog(request: HttpRequest) -> HttpResponse:
    version = catalog_cache.catalog_version()
    form = CatalogFilterForm(
        request.GET or None, choices=selectors.catalog_filter_choices(version=version)
    )
    organization = getattr(request, "organization", None)
    if organization is not None:
        currency = organization.currency
        del form.fields["currency"]
    else:
        currency = (
            form.cleaned_data.get("currency") if form.is_bound and form.is_valid() else ""
        ) or "USD"
    parts = catalog_cache.remember(
        "page",
        (currency, organization is not None, request.GET.urlencode()),
        lambda: _body(request, form, currency, version),
        version=version,
    )
    if request.htmx:
        return HttpResponse(parts["offer_list"])
    return render(request, TEMPLATE, {"body": mark_safe(parts["body"])})  # noqa: S308  # nosec B308 B703 # the template output of _body, cached
