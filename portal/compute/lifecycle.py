"""The instance lifecycle, declared once.

::

    pending → provisioning → running
    running → stopping → stopped → starting → running
    running → rebooting → running
    any live state → terminating → terminated
    pending | provisioning | starting → failed   (a launch or start that could not finish)

``TRANSITIONS`` lists every allowed (from, to) pair; ``ACTIONS`` says which customer action
moves which state where. Anything else raises ``InvalidTransition``.

The backend drives the rest, and that is declared here too: ``STEPS`` says what the sync asks
the backend in each transitional state (the command once per attempt, ``describe`` while it is
under way), and ``RULES`` says, for the state the sync acted for and what the backend answered,
the next state, its reason and the side effects (``Effect``) that go with it.
``portal.compute.services.sync`` interprets both and holds no rule of its own.
"""

from dataclasses import dataclass
from enum import StrEnum

from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from portal.compute.errors import ComputeErrorCode
from portal.errors import Conflict
from portal.provisioning.base import ObservedState


class State(models.TextChoices):
    PENDING = "pending", gettext_lazy("Pending")
    PROVISIONING = "provisioning", gettext_lazy("Provisioning")
    RUNNING = "running", gettext_lazy("Running")
    STOPPING = "stopping", gettext_lazy("Stopping")
    STOPPED = "stopped", gettext_lazy("Stopped")
    STARTING = "starting", gettext_lazy("Starting")
    REBOOTING = "rebooting", gettext_lazy("Rebooting")
    TERMINATING = "terminating", gettext_lazy("Terminating")
    TERMINATED = "terminated", gettext_lazy("Terminated")
    FAILED = "failed", gettext_lazy("Failed")


S = State
LIVE = frozenset(
    {S.PENDING, S.PROVISIONING, S.RUNNING, S.STOPPING, S.STOPPED, S.STARTING, S.REBOOTING}
)
TRANSITIONAL = frozenset(
    {S.PENDING, S.PROVISIONING, S.STOPPING, S.STARTING, S.REBOOTING, S.TERMINATING}
)
FINAL = frozenset({S.TERMINATED, S.FAILED})
# States in which the instance holds GPUs on a host.
HOLDS_CAPACITY = frozenset(
    {S.PENDING, S.PROVISIONING, S.RUNNING, S.STOPPING, S.STARTING, S.REBOOTING}
)

# What each state costs (metering asks compute's selectors, which use these): a running or
# rebooting instance is billed per second (a reboot keeps its GPUs); a stopping, stopped or
# starting one keeps its boot disk.
BILLED_RUNNING = frozenset({S.RUNNING, S.REBOOTING})
DISK_KEPT = frozenset({S.STOPPING, S.STOPPED, S.STARTING})
# On their way to running: their GPUs will be billed within moments (credit is reserved for them).
COMPUTE_COMING = frozenset({S.PENDING, S.PROVISIONING, S.STARTING})

TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    {
        (S.PENDING, S.PROVISIONING),
        (S.PROVISIONING, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.STOPPED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.STOPPED),  # the host could not take it back after all
        (S.RUNNING, S.REBOOTING),
        (S.REBOOTING, S.RUNNING),
        (S.PENDING, S.FAILED),
        (S.PROVISIONING, S.FAILED),
        (S.STARTING, S.FAILED),
        *((state, S.TERMINATING) for state in LIVE),
        (S.TERMINATING, S.TERMINATED),
        # the backend lost a machine, or an operator forced it
        *((state, S.TERMINATED) for state in LIVE),
        *((state, S.FAILED) for state in (S.RUNNING, S.STOPPING, S.REBOOTING, S.STOPPED)),
    }
)


class Action(models.TextChoices):
    START = "start", gettext_lazy("Start")
    STOP = "stop", gettext_lazy("Stop")
    REBOOT = "reboot", gettext_lazy("Reboot")
    TERMINATE = "terminate", gettext_lazy("Terminate")


ACTIONS: dict[Action, dict[State, State]] = {
    Action.STOP: {S.RUNNING: S.STOPPING},
    Action.START: {S.STOPPED: S.STARTING},
    Action.REBOOT: {S.RUNNING: S.REBOOTING},
    Action.TERMINATE: {state: S.TERMINATING for state in LIVE},
}


class InvalidTransition(Conflict):
    code = ComputeErrorCode.INVALID_TRANSITION

    def __init__(self, state: str, target: str | None = None, action: str | None = None) -> None:
        if action:
            allowed = ", ".join(sorted(s.value for s in ACTIONS[Action(action)]))
            message = _(
                "Cannot %(action)s an instance that is %(state)s; %(action)s works when it is "
                "%(allowed)s."
            ) % {"action": action, "state": state, "allowed": allowed}
        else:
            message = _("An instance cannot go from %(state)s to %(target)s.") % {
                "state": state,
                "target": target,
            }
        super().__init__(message, details={"state": state, "target": target, "action": action})


def check_transition(state: str, target: str) -> None:
    if (State(state), State(target)) not in TRANSITIONS:
        raise InvalidTransition(state, target)


def action_target(state: str, action: str) -> State:
    target = ACTIONS[Action(action)].get(State(state))
    if target is None:
        raise InvalidTransition(state, action=action)
    return target


def allowed_actions(state: str) -> list[str]:
    return [action.value for action, moves in ACTIONS.items() if State(state) in moves]


# --- what the backend drives --------------------------------------------------------------------


class Command(StrEnum):
    """The provisioning backend's operations the sync sends (``ProvisioningBackend`` methods)."""

    CREATE = "create"
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Step:
    """What the sync asks the backend while an instance is in one transitional state.

    The ``command`` is sent once per attempt: until the instance's last observation shows it
    ``under_way``; from then on each poll only asks ``describe``. An observation that says
    otherwise (a machine lost while booting, a stale one) makes the next poll send the
    command again, which every backend accepts (its operations are idempotent). With
    ``only_when``, the machine is described first and the command sent only if it is in that
    state (a reboot goes to a running machine; anything else is judged as it is).
    """

    command: Command
    under_way: frozenset[ObservedState] = frozenset()
    only_when: ObservedState | None = None


Seen = ObservedState
STEPS: dict[State, Step] = {
    S.PROVISIONING: Step(Command.CREATE, under_way=frozenset({Seen.PROVISIONING})),
    S.STARTING: Step(Command.START, under_way=frozenset({Seen.PROVISIONING})),
    S.STOPPING: Step(Command.STOP, under_way=frozenset({Seen.STOPPING})),
    S.REBOOTING: Step(
        Command.REBOOT, under_way=frozenset({Seen.REBOOTING}), only_when=Seen.RUNNING
    ),
    # every backend terminates at once and terminating again is harmless: no polling needed
    S.TERMINATING: Step(Command.TERMINATE),
}


class BackendFailure(StrEnum):
    """A backend answer that is an error rather than a machine state (transient errors are
    retried by the task and never reach the rules)."""

    CAPACITY = "capacity"  # CapacityError: the host disagrees with our capacity accounting
    PERMANENT = "permanent"  # PermanentBackendError: retrying will not help


class Effect(StrEnum):
    """A side effect of a rule, applied in the order the rule lists them, before its move."""

    RELEASE_CAPACITY = "release_capacity"  # give the GPUs back to the host
    DETACH_VOLUMES = "detach_volumes"  # volumes go back to available (or are deleted with it)
    CLEAR_ADDRESS = "clear_address"  # no address, and the running period (billing) ends
    START_RUNNING_PERIOD = "start_running_period"  # billing counts from now
    MARK_TERMINATED = "mark_terminated"  # terminated_at is now


class Detail(StrEnum):
    """What the rule's event row records as its detail."""

    NONE = "none"
    BACKEND_ERROR = "backend_error"  # {"backend_error": the error's text}
    MACHINE = "machine"  # the backend's detail of the machine
    REPORT = "report"  # {"backend": alias, "ip": the address now, **the machine's detail}


@dataclass(frozen=True)
class Rule:
    """What follows when the backend answered ``outcome`` for an instance in ``state``.

    ``next_state`` None means no move: the event is recorded and the instance stays where it
    is (the reconciler's timeouts deal with it). Either way the sync stops polling; an answer
    without a rule means "still under way: poll again".
    """

    next_state: State | None
    reason: str
    effects: tuple[Effect, ...] = ()
    detail: Detail = Detail.NONE


E = Effect
F = BackendFailure
_LET_GO = (E.RELEASE_CAPACITY, E.DETACH_VOLUMES)  # a failed instance holds nothing
_OFF = (E.RELEASE_CAPACITY, E.CLEAR_ADDRESS)  # a stopped one keeps its disk and volumes
_GONE = (E.RELEASE_CAPACITY, E.CLEAR_ADDRESS, E.DETACH_VOLUMES, E.MARK_TERMINATED)


def _failed(reason: str, detail: Detail) -> Rule:
    return Rule(S.FAILED, reason, _LET_GO, detail)


_NO_ROOM = _failed(
    gettext_noop("The host had no room for it after all; nothing is billed."), Detail.BACKEND_ERROR
)
_REPORTED = Rule(
    None,
    gettext_noop("The backend reported an error; operators have been told."),
    (),
    Detail.BACKEND_ERROR,
)
_RUNNING = Rule(
    S.RUNNING, gettext_noop("The machine is running"), (E.START_RUNNING_PERIOD,), Detail.REPORT
)
_TERMINATED = Rule(S.TERMINATED, gettext_noop("The machine is gone"), _GONE, Detail.REPORT)
_LOST = Rule(S.TERMINATED, gettext_noop("The backend no longer has this machine."), _GONE)
_BOOT_FAILED = _failed(gettext_noop("The machine failed to boot."), Detail.MACHINE)

RULES: dict[tuple[State, ObservedState | BackendFailure], Rule] = {
    # creating: it boots, or the host refuses it
    (S.PROVISIONING, Seen.RUNNING): _RUNNING,
    (S.PROVISIONING, Seen.ERROR): _BOOT_FAILED,
    (S.PROVISIONING, F.CAPACITY): _NO_ROOM,
    (S.PROVISIONING, F.PERMANENT): _failed(
        gettext_noop("The machine could not be created; nothing is billed."), Detail.BACKEND_ERROR
    ),
    # starting a stopped one, possibly on another host
    (S.STARTING, Seen.RUNNING): _RUNNING,
    (S.STARTING, Seen.ERROR): _BOOT_FAILED,
    (S.STARTING, Seen.MISSING): _LOST,
    (S.STARTING, F.CAPACITY): Rule(
        S.STOPPED,
        gettext_noop("The host could not take it back; it stays stopped. Start it again later."),
        (E.RELEASE_CAPACITY,),
        Detail.BACKEND_ERROR,
    ),
    (S.STARTING, F.PERMANENT): _failed(
        gettext_noop("The machine could not be started; nothing is billed."), Detail.BACKEND_ERROR
    ),
    # rebooting: the running period goes on
    (S.REBOOTING, Seen.RUNNING): Rule(
        S.RUNNING, gettext_noop("The machine is running"), (), Detail.REPORT
    ),
    (S.REBOOTING, Seen.ERROR): _failed(
        gettext_noop("The machine failed to come back from the reboot."), Detail.MACHINE
    ),
    (S.REBOOTING, Seen.MISSING): _LOST,
    (S.REBOOTING, F.CAPACITY): _NO_ROOM,
    (S.REBOOTING, F.PERMANENT): _REPORTED,
    # stopping: the GPUs go back, the disk stays
    (S.STOPPING, Seen.STOPPED): Rule(
        S.STOPPED, gettext_noop("The machine stopped; its GPUs are released"), _OFF, Detail.REPORT
    ),
    (S.STOPPING, Seen.ERROR): Rule(
        S.STOPPED, gettext_noop("The machine failed while stopping; it is off."), _OFF
    ),
    (S.STOPPING, Seen.MISSING): _LOST,
    (S.STOPPING, F.CAPACITY): _NO_ROOM,
    (S.STOPPING, F.PERMANENT): _REPORTED,
    # terminating: gone is gone, whether the backend says terminated or no longer knows it
    (S.TERMINATING, Seen.TERMINATED): _TERMINATED,
    (S.TERMINATING, Seen.MISSING): _TERMINATED,
    # terminate never answers "no room"; were it to, a terminating instance cannot fail
    (S.TERMINATING, F.CAPACITY): _REPORTED,
    (S.TERMINATING, F.PERMANENT): _REPORTED,
}
