"""The catalog page: public, and the same page inside the app (prices in the organisation's
currency). Filters live in the query string; htmx swaps just the offer list."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from portal.catalog import selectors
from portal.catalog.filters_form import CatalogFilterForm

PAGE_SIZE = 30


def catalog(request: HttpRequest) -> HttpResponse:
    form = CatalogFilterForm(request.GET or None)
    query = form.to_query()
    organization = getattr(request, "organization", None)
    if organization is not None:
        currency = organization.currency
        del form.fields["currency"]
    else:
        currency = (
            form.cleaned_data.get("currency") if form.is_bound and form.is_valid() else ""
        ) or "USD"
    offers = selectors.catalog_offers(currency=currency)
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
    template = "catalog/catalog.html#offer-list" if request.htmx else "catalog/catalog.html"
    return render(request, template, context)
