"""State the provisioning backends keep for themselves (not the portal's instances).

- ``SimulatedMachine`` and ``SimulatedCreateAttempt``: the simulated backend's "hypervisor",
  in the database so it survives worker restarts and is shared by every worker.
- ``LibvirtPlacement``: which libvirt host (connection URI) runs each machine, because
  ``stop``/``reboot``/``terminate``/``describe`` receive only the machine id.

Other apps never read these tables: they ask the backend (``get_backend().describe(...)``).
"""

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from portal.provisioning.base import ObservedState

# A stored machine is never "missing": that is what a backend says about a machine it lacks.
STORED_STATES = [state for state in ObservedState if state is not ObservedState.MISSING]


class SimulatedMachine(models.Model):
    """One machine of the simulated backend, with the transition it is in.

    ``transition_ready_at`` is when the current transition (boot, stop, reboot) completes; it is
    null when the machine is settled, and also while a ``sim-hang`` machine boots forever.
    Terminated machines keep their row (so describe says ``terminated``) but lose their address.
    """

    machine_id = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    host_name = models.CharField(max_length=100)
    state = models.CharField(
        max_length=20, choices=[(state.value, state.value.title()) for state in STORED_STATES]
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    gpus = models.JSONField(default=list, blank=True, help_text=_("The GpuDevices, as dicts."))
    vcpus = models.PositiveIntegerField()
    ram_gib = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()
    image = models.CharField(max_length=200)
    transition_started_at = models.DateTimeField(null=True, blank=True)
    transition_ready_at = models.DateTimeField(null=True, blank=True)
    # failure plan, from the magic values in the spec (see portal/provisioning/simulated.py)
    hang_on_boot = models.BooleanField(default=False)
    crash_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["machine_id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=[state.value for state in STORED_STATES]),
                name="provisioning_simmachine_state_valid",
            ),
            models.UniqueConstraint(
                fields=["ip_address"],
                condition=Q(ip_address__isnull=False),
                name="provisioning_simmachine_ip_unique",
            ),
        ]
        indexes = [models.Index(fields=["state"], name="provisioning_simmachine_state")]

    def __str__(self) -> str:
        return f"{self.machine_id} ({self.state})"


class SimulatedCreateAttempt(models.Model):
    """How many times ``create`` was called for a machine id that has no machine yet.

    Counts the failures of ``sim-transient-N`` across workers and restarts.
    """

    machine_id = models.CharField(max_length=100, unique=True)
    attempts = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.machine_id}: {self.attempts}"


class LibvirtPlacement(models.Model):
    """Which libvirt host runs a machine: the connection URI its domain is defined on."""

    machine_id = models.CharField(max_length=100, unique=True)
    host_name = models.CharField(max_length=100)
    uri = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["machine_id"]
        indexes = [models.Index(fields=["uri"], name="provisioning_placement_uri")]

    def __str__(self) -> str:
        return f"{self.machine_id} on {self.host_name} ({self.uri})"


class PhoneHome(models.Model):
    """A machine's report, from inside the guest, that cloud-init has finished its first boot
    (cloud-init's ``phone_home`` module posting to the machine's own URL, see
    ``portal.provisioning.phone_home``). One per machine: the URL is single-use."""

    machine_id = models.CharField(max_length=100, unique=True)
    received_at = models.DateTimeField(auto_now_add=True)
    detail = models.JSONField(
        default=dict, blank=True, help_text=_("What the guest posted (hostname, instance id).")
    )

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.machine_id} at {self.received_at:%Y-%m-%d %H:%M:%S}"
