"""Calls started at the same instant from many threads, for race tests on PostgreSQL."""

import threading
from collections.abc import Callable

from django.db import close_old_connections

from portal.errors import PortalError


def at_once(count: int, call: Callable[[int], object]) -> list[str]:
    """Run ``call(i)`` for i in range(count), each in its own thread, all released together.
    Returns each outcome: ``"ok"``, the code of the ``PortalError`` it raised, or the repr of
    any other exception (so an unexpected error shows in the test's assertion)."""
    outcomes, lock = [], threading.Lock()
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        try:
            barrier.wait()
            call(i)
            result = "ok"
        except PortalError as exc:
            result = str(exc.code)
        except Exception as exc:  # shown in the caller's assertion
            result = repr(exc)
        finally:
            close_old_connections()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
