from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    label = "billing"

    def ready(self) -> None:
        # Payments sit below invoicing and the spend controls: they announce a paid invoice
        # and arrived credit through hooks, which the upper sub-packages fill in here.
        from billing.invoicing.services import invoice_mark_paid
        from billing.payments import hooks
        from billing.spend.services import credit_arrived

        hooks.on_invoice_paid(invoice_mark_paid)
        hooks.on_credit_arrived(credit_arrived)

        from django.core.checks import register

        from billing.payments.wallets import wallet_settings_check

        register(wallet_settings_check)
