"""``{% bank_panel as bank_panel %}``: the organisation's payment reference and the centre's
bank account, for the billing page's bank-transfer panel."""

from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def bank_panel(context) -> dict:
    from billing.transfers.views import panel_context

    organization = context["current_org"]
    return panel_context(organization)
