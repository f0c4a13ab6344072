"""Compute's samples for /metrics: the instance counts, read at scrape time."""

import logging
from collections.abc import Iterable

from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

from portal.compute.lifecycle import State
from portal.compute.models import Instance

logger = logging.getLogger(__name__)


class InstanceCollector:
    """``portal_instances{state, region}`` from one GROUP BY query at scrape time. Every state
    is reported (0 when none) for each region that has instances."""

    def describe(self) -> Iterable[Metric]:
        return []  # the names are not known to clash; the query runs at scrape time only

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "portal_instances",
            "Instances in the database, by lifecycle state and region.",
            labels=["state", "region"],
        )
        try:
            rows = list(
                Instance.objects.order_by()
                .values_list("state", "region__code")
                .annotate(count=Count("id"))
            )
        except DatabaseError:
            logger.warning("could not count instances for /metrics", exc_info=True)
            return []
        counts = {(state, region): count for state, region, count in rows}
        for region in sorted({region for _state, region in counts}):
            for state in State.values:
                family.add_metric([state, region], counts.get((state, region), 0))
        return [family]
