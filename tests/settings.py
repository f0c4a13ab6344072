"""Settings for the test suite: the portal's own settings with safe defaults for a test run.

pytest loads this module (``DJANGO_SETTINGS_MODULE`` in pyproject's pytest section), so plain
``pytest`` in a fresh clone runs on SQLite with no environment variables and no collectstatic.
Every default below is an environment variable set only when the caller has not set it, so
``scripts/test.sh`` (PostgreSQL, Redis, its own temporary folders) and anyone else still win.
The variables are set in ``os.environ`` on purpose: the processes that tests start (Celery
workers, ``manage.py shell``, ``make run``) inherit them, as they would from ``export``.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST_DEFAULTS = {
    "SECRET_KEY": "test-secret-key-not-for-production",
    "DEBUG": "0",
    "IDENTITY_ENCRYPTION_KEY": "dGVzdC1pZGVudGl0eS1rZXktbm90LWZvci1wcm9kISE=",
    # the test client and the live server speak plain HTTP
    "SECURE_SSL_REDIRECT": "0",
    "SESSION_COOKIE_SECURE": "0",
    "CSRF_COOKIE_SECURE": "0",
    "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
    # tasks run in the process that sends them unless a test starts a worker
    "CELERY_TASK_ALWAYS_EAGER": "1",
    "CELERY_BROKER_URL": "memory://",
    "PORTAL_VAR_DIR": str(ROOT / "var" / "tests"),
}

# Static files: ``scripts/test.sh`` collects them into its own STATIC_ROOT, and the suite serves
# them through the production storage (hashed names from the manifest). Without a STATIC_ROOT
# from the caller nothing was collected, so pages name the files plainly and WhiteNoise finds
# them in the source folders.
COLLECTED_STATIC = bool(os.environ.get("STATIC_ROOT"))

# Set once, in the pytest process; a process it starts inherits the result together with this
# marker, so a variable that a test removed for its child process stays removed there.
if not os.environ.get("PORTAL_TEST_SETTINGS"):
    os.environ["PORTAL_TEST_SETTINGS"] = "1"
    for name, value in TEST_DEFAULTS.items():
        os.environ.setdefault(name, value)
    Path(os.environ["PORTAL_VAR_DIR"]).mkdir(parents=True, exist_ok=True)

from portal.settings import *  # noqa: E402, F403
from portal.settings import STORAGES  # noqa: E402

if not COLLECTED_STATIC:
    STORAGES = {
        **STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    WHITENOISE_USE_FINDERS = True
    STATIC_ROOT = Path(os.environ["PORTAL_VAR_DIR"]) / "static"  # empty; WhiteNoise wants one
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
