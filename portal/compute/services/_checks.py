"""The checks a launch and a start pass before they take capacity: the GPU quota, and the
hooks other apps fill in (``COMPUTE_LAUNCH_CHECKS``, ``COMPUTE_START_CHECKS``)."""

from decimal import Decimal

from django.conf import settings
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from portal.catalog.models import InstanceType
from portal.compute.errors import QuotaExceeded
from portal.compute.lifecycle import HOLDS_CAPACITY
from portal.compute.models import Instance
from portal.sql import placeholders, rows

MIG_COMPUTE_SLICES = Decimal(7)


def gpu_units(instance_type: InstanceType) -> Decimal:
    """GPUs one instance holds for quota: its GPU count, or its MIG slice's share (n/7)."""
    if instance_type.mig_profile_id:
        return Decimal(instance_type.mig_profile.compute_slices) / MIG_COMPUTE_SLICES
    return Decimal(instance_type.gpu_count)


HOLDING_STATES = sorted(s.value for s in HOLDS_CAPACITY)
# What the organisation's instances hold per GPU model (in sevenths of a GPU; one in no-GPU mode
# holds none), then its quotas (a null model: the total), in one statement.
_QUOTA_SQL = f"""
SELECT 'held', t.gpu_model_id,
    SUM(CASE WHEN t.mig_profile_id IS NULL THEN t.gpu_count * 7 ELSE mp.compute_slices END)
FROM compute_instance i
JOIN catalog_instancetype t ON t.id = i.instance_type_id
LEFT JOIN catalog_migprofile mp ON mp.id = t.mig_profile_id
WHERE i.organization_id = %s AND i.id <> %s AND i.state IN ({placeholders(HOLDING_STATES)})
  AND i.gpus
GROUP BY t.gpu_model_id
UNION ALL
SELECT 'quota', gpu_model_id, max_gpus FROM compute_quota WHERE organization_id = %s
"""  # noqa: S608  # nosec B608: placeholders only


def check_quota(
    organization, instance_type: InstanceType, *, exclude: Instance | None = None
) -> None:
    """Refuse with ``quota_exceeded`` if this type would take the organisation over its GPU
    quota, in total or for the type's GPU model. One query (what its instances hold per GPU
    model, and its quotas), whatever the fleet size; plain SQL, as it runs on every launch and
    start."""
    params = [organization.pk, exclude.pk if exclude else 0, *HOLDING_STATES, organization.pk]
    per_model, quotas = {}, {}
    for kind, model_id, amount in rows(_QUOTA_SQL, params):
        if kind == "held":
            per_model[model_id] = Decimal(amount) / MIG_COMPUTE_SLICES
        else:
            quotas[model_id] = amount
    total = sum(per_model.values(), Decimal(0))
    same_model = per_model.get(instance_type.gpu_model_id, Decimal(0))
    needed = gpu_units(instance_type)
    limits = [(None, quotas.get(None, settings.DEFAULT_GPU_QUOTA), total)]
    if instance_type.gpu_model_id in quotas:
        limits.append((instance_type.gpu_model, quotas[instance_type.gpu_model_id], same_model))
    for model, limit, used in limits:
        if used + needed > limit:
            what = _("%(model)s GPUs") % {"model": model} if model else _("GPUs in total")
            used_text = f"{used.quantize(Decimal('0.01')).normalize()}"
            raise QuotaExceeded(
                _(
                    "This launch needs %(needed)s more %(what)s; your quota is %(limit)s and "
                    "%(used)s are in use. Ask support to raise it or stop an instance."
                )
                % {
                    "needed": needed.quantize(Decimal("0.01")).normalize(),
                    "what": what,
                    "limit": limit,
                    "used": used_text,
                },
                details={
                    "limit": limit,
                    "in_use": used_text,
                    "requested": str(needed.quantize(Decimal("0.01")).normalize()),
                    "gpu_model": model.code if model else None,
                },
            )


def run_launch_checks(*, path_setting: str = "COMPUTE_LAUNCH_CHECKS", **context) -> None:
    """Hooks that may refuse a launch or a start (billing fills them in: can the organisation
    pay?)."""
    for path in getattr(settings, path_setting):
        import_string(path)(**context)
