from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "portal.provisioning"
    label = "provisioning"
    verbose_name = "Provisioning"

    def ready(self) -> None:
        from django.core import checks

        from portal.provisioning.checks import check_backends

        checks.register(check_backends, "provisioning")
