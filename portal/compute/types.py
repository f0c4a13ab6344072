"""Types other apps may use to plug into compute."""

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from portal.compute.models import Instance


class InstancePagePanel(Protocol):
    """A hook (settings.COMPUTE_INSTANCE_PAGE_PANELS) adding what another app shows on an
    instance's page, as template context (metering: the GPU telemetry panel). Compute imports
    none of those apps."""

    def __call__(self, instance: "Instance") -> dict[str, Any]: ...
