"""The burn figure (``billing.ledger.burn``) a launch's credit check reads: after any sequence of
launches, syncs, stops, starts, terminations, volumes, hours closed and debited, it says what
the full recomputation says (the balance less usage not debited, the committed burn), never
less owed, and it is recomputed when a price changes."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing.ledger.burn import burn_now
from billing.ledger.services import balance, usage_debit_pending
from billing.models import BurnFigure
from portal.catalog import services as catalog_services
from portal.compute import services as compute
from portal.compute.models import Instance, Volume
from portal.errors import PortalError
from portal.metering.rating import Rater
from portal.metering.selectors import committed_burn
from portal.metering.services import usage_close_recent
from tests import factories
from tests.factories import World

pytestmark = pytest.mark.django_db
TINY = Decimal("1e-9")  # accruals are rounded up to 1e-12 per change; debits to 1e-12 each
KINDS = (
    "launch",
    "launch_with_volume",
    "sync",
    "sync",
    "stop",
    "start",
    "terminate",
    "reboot",
    "volume_create",
    "volume_delete",
    "wait",
    "wait",
    "close_and_debit",
)


def _actions(seed: int, count: int = 40) -> list[tuple[str, object]]:
    """A reproducible random sequence of what customers, the backend and the periodic tasks do."""
    rnd = random.Random(seed)
    actions = []
    for _ in range(count):
        kind = rnd.choice(KINDS)
        arg = {
            "launch": rnd.choice(["gpu_1x_h200", "mig_1g_18gb"]),
            "launch_with_volume": rnd.randint(1, 2000),
            "volume_create": rnd.randint(1, 5000),
            "wait": rnd.randint(1, 3 * 3600),
        }.get(kind, rnd.randint(0, 7))
        actions.append((kind, arg))
    return actions


def _full(org):
    """The full recomputation: the balance less usage not debited, and the committed burn."""
    rater = Rater(org.currency)
    return balance(org, rater=rater), committed_burn(org, rater=rater)


def _act(world: World, action: str, arg: int, step: int, traveller) -> None:
    actor = world.actor()
    instances = list(Instance.objects.filter(organization=world.org).order_by("pk"))
    try:
        if action == "launch":
            compute.instance_launch(
                actor=actor, request=world.request(name=f"i-{step}", instance_type=arg)
            )
        elif action == "launch_with_volume":
            compute.instance_launch(
                actor=actor,
                request=world.request(
                    name=f"i-{step}", instance_type="mig_1g_18gb", new_volume_gb=arg
                ),
            )
        elif action == "sync" and instances:
            compute.instance_sync(instance_id=instances[arg % len(instances)].pk)
        elif action in ("stop", "start", "terminate", "reboot") and instances:
            instance = instances[arg % len(instances)]
            compute.instance_action(actor=actor, instance_id=instance.pk, action=action)
        elif action == "volume_create":
            compute.volume_create(
                actor=actor, name=f"v-{step}", region=world.region.code, size_gb=arg
            )
        elif action == "volume_delete":
            volumes = list(
                Volume.objects.filter(organization=world.org, state="available").order_by("pk")
            )
            if volumes:
                compute.volume_delete(actor=actor, volume_id=volumes[arg % len(volumes)].pk)
        elif action == "wait":
            traveller.shift(timedelta(seconds=arg))
        elif action == "close_and_debit":
            usage_close_recent()
            usage_debit_pending()
    except PortalError:
        pass  # refused (a transition not allowed now, no capacity): nothing changed


@pytest.mark.parametrize("seed", range(8))
def test_the_maintained_figure_matches_the_full_recomputation(memory_backend, settings, seed):
    """After every step of a random sequence (launches, syncs, stops, starts, reboots,
    terminations, volumes, time passing, hours closed and debited), the figure's balance less
    usage not debited is the full recomputation's, rounded towards owing more, and its
    committed burn is the full one to the last digit."""
    settings.BILLING_BURN_RECONCILE_SECONDS = 10**9  # kept by the hooks alone throughout
    actions = _actions(seed)
    start = datetime(2030, 1, 1, 9, 40, tzinfo=UTC) + timedelta(days=40 * seed)
    with time_machine.travel(start, tick=False) as traveller:
        world = World(hosts=1, gpus_per_host=8, region_code=f"r{seed}")
        factories.credit(world.org, "100000")
        burn_now(world.org)  # the figure is made (reconciled) once, here
        made = BurnFigure.objects.get(organization=world.org).reconciled_at
        for step, (action, arg) in enumerate(actions):
            _act(world, action, arg, step, traveller)
            maintained = burn_now(world.org)
            full_balance, full_committed = _full(world.org)
            where = (step, action, arg)
            assert maintained.available_balance <= full_balance, where  # never less owed
            assert full_balance - maintained.available_balance < TINY, where
            assert maintained.committed_per_hour == full_committed, where
        # it was kept, not recomputed: the hooks and the debits did all of it
        assert BurnFigure.objects.get(organization=world.org).reconciled_at == made
        assert Instance.objects.filter(organization=world.org).exists()


def test_running_usage_accrues_and_a_debit_moves_it_into_the_balance(memory_backend, settings):
    start = datetime(2031, 3, 1, 10, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        world = World(hosts=1, credit_amount="100")
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        compute.instance_sync(instance_id=instance.pk)  # running at 3.50 an hour
        assert burn_now(world.org).available_balance == Decimal("100")
        traveller.shift(timedelta(minutes=90))
        assert burn_now(world.org).available_balance == Decimal("94.75")  # 1.5 h at 3.50
        traveller.shift(timedelta(minutes=30))  # 12:00: the 10:00 hour can close
        usage_close_recent()
        usage_debit_pending()
        figure = burn_now(world.org)
        assert figure.balance == Decimal("96.50")  # 10:00-11:00 debited
        assert figure.available_balance == Decimal("93.00") == balance(world.org)


def test_a_price_change_is_seen_by_the_next_check(memory_backend):
    start = datetime(2031, 4, 1, 10, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        world = World(hosts=1, credit_amount="100")
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        compute.instance_sync(instance_id=instance.pk)
        assert burn_now(world.org).committed_per_hour == Decimal("3.50")
        catalog_services.price_set(
            instance_type=world.types["gpu_1x_h200"],
            region=world.region,
            currency="USD",
            on_demand_per_hour=Decimal("5.00"),
            effective_from=start + timedelta(hours=1),
        )
        assert burn_now(world.org).committed_per_hour == Decimal("3.50")  # not in force yet
        traveller.shift(timedelta(hours=2))  # one hour at 3.50, one at 5.00
        figure = burn_now(world.org)
        assert figure.committed_per_hour == Decimal("5.00")
        assert figure.available_balance == Decimal("91.50") == balance(world.org)
