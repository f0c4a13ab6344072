from django.apps import AppConfig


class ComputeConfig(AppConfig):
    name = "portal.compute"
    label = "compute"

    def ready(self) -> None:
        from portal.compute.metrics import InstanceCollector
        from portal.observability.metrics import scrape_collector_register

        scrape_collector_register(InstanceCollector)
