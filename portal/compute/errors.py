"""Every error code compute raises, and its domain errors.

The codes are part of the API (``{"error": {"code": ...}}``) and of the pages' behaviour, so
their values never change; raise them by member (``ComputeErrorCode.NAME_TAKEN``), never by a
string spelled again. ``InvalidTransition`` lives beside the lifecycle it explains
(``portal.compute.lifecycle``); ``CapacityUnavailable`` (``capacity_unavailable``) is the
catalog's, raised when no host has room. Provisioning has no codes of its own: its
``BackendError`` classes (``portal.provisioning.base``) never reach a customer; the sync turns
them into the lifecycle's rules (``BackendFailure``).
"""

from enum import StrEnum

from portal.errors import Conflict, error_codes


@error_codes
class ComputeErrorCode(StrEnum):
    INVALID = "invalid"  # a launch, volume or rename request that is not valid (see details)
    ACTION_UNSUPPORTED = "action_unsupported"  # the instance's engine cannot (Slurm: stop)
    NAME_TAKEN = "name_taken"
    # a node of a cluster is stopped or terminated only with its cluster
    CLUSTER_MEMBER = "cluster_member"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    QUOTA_EXCEEDED = "quota_exceeded"
    VOLUME_IN_USE = "volume_in_use"
    INVALID_TRANSITION = "invalid_transition"
    PHONE_HOME_USED = "phone_home_used"  # a machine's phone-home URL is single-use
    # starting without GPUs is not offered here (no no-GPU price in the region and currency)
    NO_GPU_MODE_UNAVAILABLE = "no_gpu_mode_unavailable"


class QuotaExceeded(Conflict):
    """The launch or start would take the organisation over its GPU quota."""

    code = ComputeErrorCode.QUOTA_EXCEEDED
