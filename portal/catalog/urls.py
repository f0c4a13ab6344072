from django.urls import path

from portal.catalog import views

app_name = "catalog"

urlpatterns = [
    path("catalog/", views.catalog, name="catalog"),
]
