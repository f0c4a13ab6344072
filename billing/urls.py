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

# Fapiao (发票): the customer's requests and downloads.
from billing.fapiao import views as fapiao_views  # noqa: E402

urlpatterns += [
    path("billing/fapiao/", fapiao_views.fapiao_page, name="fapiao"),
    path("billing/fapiao/<int:pk>/", fapiao_views.fapiao_request, name="fapiao_request"),
    path("billing/fapiao/<int:pk>/file/", fapiao_views.fapiao_file, name="fapiao_file"),
]

# The finance area's fapiao queue.
from billing.finance import fapiao as finance_fapiao  # noqa: E402

urlpatterns += [
    path("finance/fapiao/", finance_fapiao.fapiao_queue, name="finance_fapiao"),
    path("finance/fapiao/export/", finance_fapiao.fapiao_export, name="finance_fapiao_export"),
    path(
        "finance/fapiao/<int:pk>/issue/", finance_fapiao.fapiao_issue, name="finance_fapiao_issue"
    ),
    path(
        "finance/fapiao/<int:pk>/reject/",
        finance_fapiao.fapiao_reject,
        name="finance_fapiao_reject",
    ),
    path(
        "finance/fapiao/red-letter/",
        finance_fapiao.fapiao_red_letter,
        name="finance_fapiao_red_letter",
    ),
    path("finance/fapiao/<int:pk>/file/", finance_fapiao.fapiao_file, name="finance_fapiao_file"),
]

# Bank transfers (对公转账): the customer's page and finance's matching.
from billing.finance import bank_transfers as bank_views  # noqa: E402
from billing.transfers import views as transfer_views  # noqa: E402

urlpatterns += [
    path("billing/bank-transfer/", transfer_views.bank_transfer, name="bank_transfer"),
    path(
        "billing/bank-transfer/notices/<int:pk>/slip/",
        transfer_views.notice_slip,
        name="bank_transfer_slip",
    ),
    path("finance/bank-transfers/", bank_views.bank_transfers, name="finance_bank_transfers"),
    path("finance/bank-transfers/lines/", bank_views.line_create, name="finance_bank_line_create"),
    path(
        "finance/bank-transfers/import/",
        bank_views.statement_import,
        name="finance_bank_statement_import",
    ),
    path(
        "finance/bank-transfers/lines/<int:pk>/match/",
        bank_views.line_match,
        name="finance_bank_line_match",
    ),
    path(
        "finance/bank-transfers/lines/<int:pk>/return/",
        bank_views.line_return,
        name="finance_bank_line_return",
    ),
    path(
        "finance/bank-transfers/notices/<int:pk>/reject/",
        bank_views.notice_reject,
        name="finance_bank_notice_reject",
    ),
    path(
        "finance/bank-transfers/notices/<int:pk>/slip/",
        bank_views.notice_slip,
        name="finance_bank_notice_slip",
    ),
]
