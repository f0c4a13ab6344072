"""Payment providers: ``provider()`` gives the configured one (``PAYMENT_PROVIDER``)."""

from django.conf import settings
from django.utils.module_loading import import_string

from billing.payments.base import PaymentProvider

PROVIDERS = {
    "fake": "billing.payments.fake.FakeProvider",
    "stripe": "billing.payments.stripe_provider.StripeProvider",
    # Wallets: one-off top-ups only (billing.payments.wallets)
    "alipay": "billing.payments.alipay_provider.AlipayProvider",
    "wechatpay": "billing.payments.wechat_provider.WeChatPayProvider",
}


def provider(name: str | None = None) -> PaymentProvider:
    name = name or settings.PAYMENT_PROVIDER
    if name not in PROVIDERS:
        raise LookupError(f"Unknown payment provider '{name}'; use one of {', '.join(PROVIDERS)}.")
    return import_string(PROVIDERS[name])()
