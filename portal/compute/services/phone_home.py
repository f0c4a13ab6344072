"""A machine telling the portal, from inside, that its first boot is done (cloud-init's
``phone_home`` posting to the URL its seed carries; ``portal.provisioning.phone_home`` makes
and checks the URL).

The post is kept once (the URL is single-use) and written in the instance's events; the sync
is sent at once so a machine waiting for it becomes ``running`` (and billed) without waiting
for the next poll. The backend still decides: the sync asks it, and it counts the post.
"""

from collections.abc import Mapping

from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import LIVE, TRANSITIONAL
from portal.compute.models import Instance
from portal.compute.services._common import SYSTEM, dispatch, locked_instance, record_event
from portal.errors import Conflict, InvalidInput, NotFound
from portal.provisioning import phone_home

PHONED_HOME = gettext_noop("The machine reported that cloud-init finished its first boot")


def _instance_of(machine_id: str | None) -> Instance:
    prefix = "inst-"
    pk = machine_id[len(prefix) :] if machine_id and machine_id.startswith(prefix) else ""
    instance = Instance.objects.filter(pk=int(pk)).first() if pk.isdigit() else None
    if instance is None or instance.state not in LIVE:
        raise NotFound(_("No machine answers to this address."))
    return instance


def instance_phone_home(*, token: str, posted: Mapping[str, str]) -> Instance:
    """Take a machine's phone-home post: ``not_found`` for a token this portal did not make (or
    an instance that is gone), ``invalid`` when the posted instance id is not the machine's,
    ``phone_home_used`` the second time."""
    machine_id = phone_home.machine_for(token)
    instance = _instance_of(machine_id)
    if posted.get("instance_id") != machine_id:
        raise InvalidInput(
            _("The posted instance_id is not this machine's."),
            code=ComputeErrorCode.INVALID,
            details={"instance_id": "must be the machine's instance id"},
        )
    with transaction.atomic(durable=True):
        instance = locked_instance(instance.pk)
        if not phone_home.record(machine_id, posted):
            raise Conflict(
                _("This machine has phoned home already; the address works once."),
                code=ComputeErrorCode.PHONE_HOME_USED,
            )
        record_event(
            instance,
            actor=SYSTEM,
            reason=PHONED_HOME,
            detail={"stage": "phoned_home", "hostname": posted.get("hostname", "")[:255]},
        )
        if instance.state in TRANSITIONAL:
            dispatch(instance)  # the backend counts the post now: no need to wait for a poll
    return instance
