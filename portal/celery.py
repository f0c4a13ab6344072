"""The Celery application. Tasks live in each app's ``tasks.py``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Log context, request-id propagation and task metrics; Django's LOGGING instead of Celery's.
import portal.observability.celery_signals  # noqa: E402, F401


@app.on_after_configure.connect
def _periodic_tasks(sender: Celery, **kwargs) -> None:
    from portal.scheduled import SCHEDULE

    sender.conf.beat_schedule = {**SCHEDULE, **(sender.conf.beat_schedule or {})}


@app.on_after_configure.connect
def _make_broker_folders(sender: Celery, **kwargs) -> None:
    options = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if options.get(key):
            os.makedirs(options[key], exist_ok=True)


@app.task(name="portal.ping")
def ping() -> str:
    """A no-op that proves a worker is consuming (used by tests and operators)."""
    return "pong"
