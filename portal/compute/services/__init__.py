"""Every write about instances and volumes, by concern.

- ``launch``: ``instance_launch`` (role, quota, billing checks, capacity under row locks);
- ``actions``: ``instance_action`` (start, stop, reboot, terminate) and ``instance_rename``;
- ``volumes``: ``volume_create``, ``volume_delete``;
- ``idle``: automatic stops: ``instance_stop_settings_set`` and the periodic ``idle_watch``
  (GPUs idle for N minutes, or a scheduled shutdown time);
- ``sync``: ``instance_sync``, one step towards the desired state, carrying out the lifecycle's
  ``STEPS`` and ``RULES`` (``portal.compute.lifecycle``);
- ``phone_home``: ``instance_phone_home``, a machine's own report that its first boot is done;
- ``reconcile``: the periodic sweep that leaves nothing stuck;
- ``release``: ``release_due``, the periodic sweep that notifies about and then releases
  instances stopped too long (volumes kept), and ``release_at``, when one is released;
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
    actions_offered,
    instance_action,
    instance_rename,
    no_gpu_price,
    no_gpu_shape,
)
from portal.compute.services.idle import (
    UNSET,
    IdleVerdict,
    IdleWatchReport,
    idle_verdict,
    idle_watch,
    instance_stop_settings_set,
    stop_settings_errors,
)
from portal.compute.services.launch import LaunchRequest, instance_launch
from portal.compute.services.operator import (
    operator_force_terminate,
    operator_mark_failed,
    operator_resync,
)
from portal.compute.services.phone_home import instance_phone_home
from portal.compute.services.reconcile import ReconcileReport, reconcile
from portal.compute.services.release import (
    ReleaseReport,
    moment_text,
    release_at,
    release_due,
    time_left_text,
)
from portal.compute.services.sync import instance_sync
from portal.compute.services.volumes import volume_create, volume_delete

__all__ = [
    "MIG_COMPUTE_SLICES",
    "NAME_PATTERN",
    "SYSTEM",
    "UNSET",
    "IdleVerdict",
    "IdleWatchReport",
    "LaunchRequest",
    "QuotaExceeded",
    "ReconcileReport",
    "ReleaseReport",
    "actions_offered",
    "gpu_units",
    "idle_verdict",
    "idle_watch",
    "instance_action",
    "instance_launch",
    "instance_phone_home",
    "instance_rename",
    "instance_stop_settings_set",
    "instance_sync",
    "mark_dispatched",
    "moment_text",
    "no_gpu_price",
    "no_gpu_shape",
    "operator_force_terminate",
    "operator_mark_failed",
    "operator_resync",
    "reconcile",
    "release_at",
    "release_due",
    "stop_settings_errors",
    "time_left_text",
    "volume_create",
    "volume_delete",
]
