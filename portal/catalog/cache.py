"""The catalog's cache: offers, and the pages built from them, kept under one catalog version.

Offers (types, prices in force, availability) cost a few hundred milliseconds to rebuild at
scale and change far less often than they are read, so they are cached, and so is what the
API and the catalog page make of them (a serialized page per query). Every entry's key holds
the *catalog version*, read once per request; any change of what the catalog shows moves the
version, so the next request builds afresh: a launch shows in availability at once.

What moves it
    ``catalog_changed()``, called by the signal receivers in ``portal.catalog.signals`` on
    every save and delete of a GPU model, MIG profile, region, instance type, price, host, GPU
    or allocation (so services, admin edits and imports are covered, and a reservation or a
    release, which create or save an ``Allocation``). Writes that send no signals (bulk
    loads, ``QuerySet.update``) call it themselves.

Where it lives
    In the database, so every process sees the same version: the Celery worker that releases
    a failed launch's capacity and the web process showing the catalog agree, whatever the
    cache backend (LocMem in development keeps one cache per process; that is only a memo,
    because each process reads the version from the database). On PostgreSQL it is the
    sequence ``catalog_version``: ``nextval()`` is not transactional and takes no row lock, so
    launches bumping it inside their transactions never queue behind each other (a counter
    row would be one hot row lock held by every launch until its commit). Elsewhere (SQLite,
    one writer at a time anyway) it is the single ``CatalogVersion`` row.

When it moves
    Twice: at once, and again after the transaction commits. The first bump makes the change
    visible to the transaction itself (and to tests, whose transactions never commit). The
    second retires whatever a concurrent reader built between the first bump and the commit,
    when it read the old rows under the new version.

How long entries live
    Until the version moves, the next scheduled price takes effect (``valid_until``, checked on
    every read), or ``CATALOG_CACHE_SECONDS`` pass, whichever is first. When the cache itself
    is down, the catalog is built for each request, as it was before there was a cache.
"""

import hashlib
import logging
import time
from collections.abc import Callable, Hashable
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import translation

logger = logging.getLogger(__name__)

SEQUENCE = "catalog_version"
DEFAULT_SECONDS = 600


def catalog_version() -> int:
    """The current catalog version (one query)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT last_value + (CASE WHEN is_called THEN 1 ELSE 0 END) FROM catalog_version"
            )
        else:
            cursor.execute("SELECT value FROM catalog_catalogversion WHERE id = 1")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def bump() -> None:
    """Move the version (what ``catalog_changed`` does now and again after commit)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT nextval(%s)", [SEQUENCE])
        else:
            cursor.execute(
                "INSERT INTO catalog_catalogversion (id, value) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET value = value + 1"
            )


def catalog_changed() -> None:
    """Something the catalog shows changed: bump the version now and after commit."""
    bump()
    transaction.on_commit(bump)


def _key(version: int, name: str, parts: tuple[Hashable, ...]) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
    return f"catalog:{version}:{translation.get_language() or ''}:{name}:{digest}"


def remember[T](
    name: str,
    parts: tuple[Hashable, ...],
    build: Callable[[], tuple[T, datetime | None]],
    *,
    version: int,
) -> T:
    """The value cached for (``name``, ``parts``) under ``version`` and the active language,
    or ``build()``'s, cached. ``build`` returns the value and when it stops being true (the
    next scheduled price), or None."""
    key = _key(version, name, parts)
    try:
        entry = cache.get(key)
    except Exception:  # the cache is down: the catalog still answers, built afresh
        logger.warning("catalog cache unavailable; building %s without it", name, exc_info=True)
        return build()[0]
    now = time.time()
    if entry is not None and (entry[0] is None or now < entry[0]):
        return entry[1]
    value, valid_until = build()
    until = valid_until.timestamp() if valid_until is not None else None
    seconds = getattr(settings, "CATALOG_CACHE_SECONDS", DEFAULT_SECONDS)
    if until is not None:
        seconds = min(seconds, until - now)
    if seconds > 0:
        try:
            cache.set(key, (until, value), seconds)
        except Exception:
            logger.warning("catalog cache unavailable; %s not kept", name, exc_info=True)
    return value
