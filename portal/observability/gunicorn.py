"""Gunicorn settings hooks for Prometheus' multiprocess mode.

``gunicorn -c python:portal.observability.gunicorn portal.wsgi:application ...`` (other options
on the command line as usual). When a worker exits, its live samples are dropped from
``PROMETHEUS_MULTIPROC_DIR`` (its counters and histograms stay: they are totals).
"""

import os


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
