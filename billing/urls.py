from django.urls import path

from billing import views

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
    path("billing/invoices/<int:pk>/", views.invoice_detail, name="invoice"),
    path("billing/invoices/<int:pk>/pdf/", views.invoice_pdf, name="invoice_pdf"),
    path("billing/checkout/fake/<str:token>/", views.fake_checkout, name="fake_checkout"),
    path("webhooks/<slug:provider_name>/", views.webhook, name="webhook"),
]
