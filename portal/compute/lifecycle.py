"""The instance lifecycle, declared once.

::

    pending → provisioning → running
    running → stopping → stopped → starting → running
    running → rebooting → running
    any live state → terminating → terminated
    pending | provisioning | starting → failed   (a launch or start that could not finish)

``TRANSITIONS`` lists every allowed (from, to) pair; ``ACTIONS`` says which customer action
moves which state where. Anything else raises ``InvalidTransition``.
"""

from django.db import models

from portal.errors import Conflict


class State(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    REBOOTING = "rebooting", "Rebooting"
    TERMINATING = "terminating", "Terminating"
    TERMINATED = "terminated", "Terminated"
    FAILED = "failed", "Failed"


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
    START = "start", "Start"
    STOP = "stop", "Stop"
    REBOOT = "reboot", "Reboot"
    TERMINATE = "terminate", "Terminate"


ACTIONS: dict[Action, dict[State, State]] = {
    Action.STOP: {S.RUNNING: S.STOPPING},
    Action.START: {S.STOPPED: S.STARTING},
    Action.REBOOT: {S.RUNNING: S.REBOOTING},
    Action.TERMINATE: {state: S.TERMINATING for state in LIVE},
}


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, state: str, target: str | None = None, action: str | None = None) -> None:
        if action:
            allowed = ", ".join(sorted(s.value for s in ACTIONS[Action(action)]))
            message = (
                f"Cannot {action} an instance that is {state}; {action} works when it is {allowed}."
            )
        else:
            message = f"An instance cannot go from {state} to {target}."
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
