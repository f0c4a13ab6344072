from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "portal.catalog"
    label = "catalog"

    def ready(self) -> None:
        from portal.catalog import signals

        signals.connect()
