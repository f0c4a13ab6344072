"""What operators do from admin to an instance the lifecycle cannot settle by itself.

Each service takes the acting staff member as an operator ``Actor``
(``Actor.for_operator(user, instance.organization, ip)``): the instance's events carry their
label (``operator <email>``) and the organisation's audit log names them.

These are not durable transactions: admin runs an action chosen on an instance's change form
inside its own transaction (``ModelAdmin.changeform_view``), so they nest in it there.
"""

from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.compute.lifecycle import FINAL, TRANSITIONAL
from portal.compute.models import Instance
from portal.compute.services._common import (
    dispatch,
    fail,
    force_terminated,
    locked_instance,
    record_event,
    record_observation,
)
from portal.errors import NotFound, PermissionDenied
from portal.provisioning import get_backend


def _check(actor: Actor, instance: Instance) -> Instance:
    """An operator acts on an instance in the organisation their actor was built for."""
    if not actor.operator or actor.user is None:
        raise PermissionDenied(_("Only staff acting from admin may do this."))
    if actor.organization is None or actor.organization.pk != instance.organization_id:
        raise NotFound(_("No such instance in this organisation."))
    return instance


def _locked_for(actor: Actor, instance_id: int) -> Instance:
    return _check(actor, locked_instance(instance_id))


def _operator_audit(actor: Actor, instance: Instance, action: str, details=None) -> None:
    """Operator actions show in the organisation's audit log too, naming the staff member."""
    audit_record(
        actor=actor,
        action=action,
        target=instance,
        organization=instance.organization,
        details={"operator": actor.label, **(details or {})},
    )


def operator_resync(*, actor: Actor, instance_id: int) -> None:
    """Ask the backend again: re-dispatch a moving instance, refresh a settled one's observation."""
    with transaction.atomic():
        instance = _locked_for(actor, instance_id)
        record_event(
            instance, actor=actor.label, reason=gettext_noop("Re-sync requested by an operator")
        )
        _operator_audit(actor, instance, "instance.operator_resync")
        if instance.state in TRANSITIONAL:
            dispatch(instance)
            return
    status = get_backend(instance.backend).describe(instance.machine_id)
    with transaction.atomic():
        instance = locked_instance(instance_id)
        record_observation(instance, status)


def operator_force_terminate(*, actor: Actor, instance_id: int) -> None:
    """Terminate now, whatever the state: backend terminate (best effort), release, record."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None:
        raise NotFound(_("No such instance."))
    _check(actor, instance)  # before the backend is told anything
    try:
        get_backend(instance.backend).terminate(instance.machine_id)
    except Exception as exc:  # recorded; the orphan sweep shows a machine left behind
        detail = {"backend_error": str(exc)}
    else:
        detail = {}
    with transaction.atomic():
        instance = locked_instance(instance_id)
        if instance.state not in FINAL:
            force_terminated(instance, "Force-terminated by an operator", actor=actor.label)
            _operator_audit(actor, instance, "instance.operator_force_terminate", detail)
            if detail:
                record_event(
                    instance,
                    actor=actor.label,
                    reason=gettext_noop("Backend terminate failed"),
                    detail=detail,
                )


def operator_mark_failed(*, actor: Actor, instance_id: int, reason: str = "") -> None:
    """Failed, without asking the backend: its GPUs go back and its volumes are detached."""
    with transaction.atomic():
        instance = _locked_for(actor, instance_id)
        if instance.state not in FINAL:
            fail(instance, reason or "Marked failed by an operator", actor=actor.label)
            _operator_audit(actor, instance, "instance.operator_mark_failed", {"reason": reason})
