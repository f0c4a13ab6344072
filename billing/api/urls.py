from django.urls import path

from billing.api import bank_transfers, fapiao, views

urlpatterns = [
    path("balance", views.BalanceView.as_view(), name="api-balance"),
    path("ledger", views.LedgerView.as_view(), name="api-ledger"),
    path("spend-limit", views.SpendLimitView.as_view(), name="api-spend-limit"),
    path("credit-requests", views.CreditRequestListView.as_view(), name="api-credit-requests"),
    path("invoices", views.InvoiceListView.as_view(), name="api-invoices"),
    path("invoices/<int:pk>", views.InvoiceDetailView.as_view(), name="api-invoice"),
    path("invoices/<int:pk>/pdf", views.InvoicePdfView.as_view(), name="api-invoice-pdf"),
    path(
        "bank-transfers/reference",
        bank_transfers.BankTransferReferenceView.as_view(),
        name="api-bank-transfer-reference",
    ),
    path(
        "bank-transfers", bank_transfers.BankTransferListView.as_view(), name="api-bank-transfers"
    ),
    path("fapiao-requests", fapiao.FapiaoRequestListView.as_view(), name="api-fapiao-requests"),
    path(
        "fapiao-requests/<int:pk>",
        fapiao.FapiaoRequestDetailView.as_view(),
        name="api-fapiao-request",
    ),
    path(
        "fapiao-requests/<int:pk>/file",
        fapiao.FapiaoFileView.as_view(),
        name="api-fapiao-request-file",
    ),
    path("top-ups", views.TopUpView.as_view(), name="api-top-ups"),
    path("payments/<int:pk>", views.PaymentDetailView.as_view(), name="api-payment"),
]
