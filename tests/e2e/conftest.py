"""Browser fixtures: the system Chromium (``TEST_CHROMIUM``) driven by pytest-playwright.

``scripts/test.sh`` sets ``TEST_CHROMIUM`` when Chromium is installed. Without it the browser
tests skip locally and fail in CI (``tests.conftest.missing``). Playwright's own browser
downloads are never used.
"""

import os
from pathlib import Path

# pytest-playwright runs an event loop in this thread; Django's ORM calls from the sync test
# code are safe here (one thread, no real concurrency), so tell Django so for browser tests only.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import pytest
from playwright.sync_api import expect
from pytest_django.live_server_helper import LiveServer

from tests.conftest import missing

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"

# Short waits: a local page that needs more than this is a bug worth seeing.
ACTION_TIMEOUT_MS = 5_000
NAVIGATION_TIMEOUT_MS = 10_000

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _no_static_handler(application):
    return application


@pytest.fixture(scope="session")
def live_server(request):
    """pytest-django's live server, but static files come from the app's own WhiteNoise.

    pytest-django wraps the server in staticfiles' ``StaticFilesHandler``, which looks files up
    with the finders and answers 404 for the hashed names that ``ManifestStaticFilesStorage``
    (on when DEBUG is off) puts in the pages: the browser would get no CSS and no htmx. Without
    the wrapper, WhiteNoise serves the collected ``STATIC_ROOT`` exactly as in production.
    """
    addr = (
        request.config.getvalue("liveserver")
        or os.environ.get("DJANGO_LIVE_TEST_SERVER_ADDRESS")
        or "localhost"
    )
    server = LiveServer(addr, start=False)
    server.thread.static_handler = _no_static_handler
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium, headless."""
    executable = os.environ.get("TEST_CHROMIUM", "")
    if not executable or not Path(executable).is_file():
        missing(
            "browser tests need Chromium: set TEST_CHROMIUM (make test does when it is installed)"
        )
    return {
        **browser_type_launch_args,
        "executable_path": executable,
        "headless": True,
        "args": CHROMIUM_ARGS,
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}, "locale": "en-GB"}


@pytest.fixture
def page(page):
    """pytest-playwright's page with short default timeouts (also for ``expect``)."""
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    page.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    return page


@pytest.fixture
def screenshot_dir() -> Path:
    """``test-artifacts/screenshots/`` under the repository root (gitignored)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR


@pytest.fixture
def screenshot(page, screenshot_dir, request):
    """``screenshot("signup")`` saves ``<test name without test_>-01-signup.png`` (full page) and
    returns its path."""
    prefix = request.node.originalname.removeprefix("test_")
    for stale in screenshot_dir.glob(f"{prefix}-*.png"):
        stale.unlink()
    counter = iter(range(1, 100))

    def take(step: str) -> Path:
        path = screenshot_dir / f"{prefix}-{next(counter):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
