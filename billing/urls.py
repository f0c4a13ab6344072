from django.urls import path

from billing import views, wallet_views

app_name = "billing"

urlpatterns = [
    path("billing/", views.billing, name="billing"),
    path("billing/top-up/", views.top_up, name="top_up"),
    path("billing/payments/", views.payments_page, name="payments"),
    path("billing/cards/add/", views.card_add, name="card_add"),
    path("billing/cards/<int:pk>/default/", views.card_default, name="card_default"),
    path("billing/cards/<int:pk>/remove/", views.card_remove, name="card_remove"),
    path("billing/auto-recharge/", views.auto_recharge, name="auto_recharge"),
    path("billing/spend-limit/", views.spend_limit, name="spend_limit"),
    path("billing/monthly-invoicing/", views.credit_request, name="credit_request"),
    path(
        "billing/monthly-invoicing/<int:pk>/withdraw/",
        views.credit_request_withdraw,
        name="credit_request_withdraw",
    ),
    path("billing/invoices/<int:pk>/", views.invoice_detail, name="invoice"),
    path("billing/invoices/<int:pk>/pdf/", views.invoice_pdf, name="invoice_pdf"),
    path(
        "billing/invoices/<int:pk>/e-invoice/<str:flavor>/",
        views.invoice_einvoice,
        name="invoice_einvoice",
    ),
    path("billing/checkout/fake/<str:token>/", views.fake_checkout, name="fake_checkout"),
    path("billing/pay/<int:pk>/", wallet_views.pay_page, name="wallet_pay"),
    path("billing/pay/<int:pk>/status/", wallet_views.pay_status, name="wallet_pay_status"),
    path("webhooks/alipay/", wallet_views.alipay_notify, name="alipay_notify"),
    path("webhooks/wechatpay/", wallet_views.wechatpay_notify, name="wechatpay_notify"),
    path("webhooks/<slug:provider_name>/", views.webhook, name="webhook"),
]

# The finance area (staff): the register and period exports.
from billing.finance import views as finance_views  # noqa: E402

urlpatterns += [
    path("finance/", finance_views.finance_index, name="finance"),
    path("finance/exports/", finance_views.export_create, name="finance_export_create"),
    path("finance/exports/<int:pk>/", finance_views.export_detail, name="finance_export"),
    path(
        "finance/exports/<int:pk>/download",
        finance_views.export_download,
        name="finance_export_download",
    ),
]
