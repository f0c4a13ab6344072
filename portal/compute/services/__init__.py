"""Every write about instances and volumes, by concern.

- ``launch``: ``instance_launch`` (role, quota, billing checks, capacity under row locks);
- ``actions``: ``instance_action`` (start, stop, reboot, terminate) and ``instance_rename``;
- ``volumes``: ``volume_create``, ``volume_delete``;
- ``sync``: ``instance_sync``, one step towards the desired state, carrying out the lifecycle's
  ``STEPS`` and ``RULES`` (``portal.compute.lifecycle``);
- ``reconcile``: the periodic sweep that leaves nothing stuck;
- ``operator``: what staff do from admin (``operator_resync``, ``operator_force_terminate``,
  ``operator_mark_failed``), as an operator ``Actor``;
- ``_checks`` (quota, launch hooks) and ``_common`` (events, transitions, the lock order,
  dispatching the sync task after commit) are shared by the others.

Customer-facing services lock the organisation (then hosts, then the instance: the house lock
order), check the role, write an event and an audit row, and enqueue the sync task on commit.
Other apps import from here (``from portal.compute.services import instance_action``), not
from the modules.
"""

from portal.compute.errors import QuotaExceeded
from portal.compute.services._checks import MIG_COMPUTE_SLICES, gpu_units
from portal.compute.services._common import NAME_PATTERN, SYSTEM, mark_dispatched
from portal.compute.services.actions import (
    instance_action,
    instance_rename,
    no_gpu_price,
    no_gpu_shape,
)
from portal.compute.services.launch import LaunchRequest, instance_launch
from portal.compute.services.operator import (
    operator_force_terminate,
    operator_mark_failed,
    operator_resync,
)
from portal.compute.services.reconcile import ReconcileReport, reconcile
from portal.compute.services.sync import instance_sync
from portal.compute.services.volumes import volume_create, volume_delete

__all__ = [
    "MIG_COMPUTE_SLICES",
    "NAME_PATTERN",
    "SYSTEM",
    "LaunchRequest",
    "QuotaExceeded",
    "ReconcileReport",
    "gpu_units",
    "instance_action",
    "instance_launch",
    "instance_rename",
    "instance_sync",
    "mark_dispatched",
    "no_gpu_price",
    "no_gpu_shape",
    "operator_force_terminate",
    "operator_mark_failed",
    "operator_resync",
    "reconcile",
    "volume_create",
    "volume_delete",
]
