from django.apps import AppConfig


class ComputeConfig(AppConfig):
    name = "portal.compute"
    label = "compute"
