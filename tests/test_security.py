"""Security hardening that no single app owns: the Content-Security-Policy on every page and
pages that need nothing it forbids, secure cookies and HSTS in production, hostile host reports.

Covered elsewhere, not repeated here:

- ``manage.py check --deploy`` is clean with production settings:
  ``tests/test_platform.py::test_check_deploy_is_clean_with_production_settings``.
- Log-in throttling: ``tests/accounts/test_pages.py::test_login_wrong_password_then_throttled_with_429``
  and ``tests/accounts/test_services.py::test_login_is_throttled_after_repeated_failures``;
  API throttling: ``tests/api/test_contract.py::test_api_is_throttled_per_key``.
- API keys are stored hashed (the secret is neither the hash nor the prefix, and admin never
  shows the hash): ``tests/accounts/test_services.py``, ``tests/accounts/test_admin.py``.
- Webhooks refuse bad, old, foreign or missing signatures:
  ``tests/billing/test_payments.py::test_a_bad_or_old_signature_is_refused_and_nothing_is_stored``
  and ``tests/billing/test_stripe_provider.py``.

The same pages are opened in Chromium, which reports any CSP violation, by
``tests/e2e/test_csp.py``.
"""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from billing.models import Invoice
from portal.accounts.models import Organization, User
from portal.catalog import services as catalog_services
from portal.catalog.models import Host, InstanceType
from portal.catalog.reports import MAX_REPORT_BYTES
from portal.celery import app as celery_app
from portal.compute.models import Instance
from portal.errors import InvalidInput
from tests import factories
from tests.factories.catalog import BILLION_LAUGHS, EXTERNAL_ENTITY

EXPECTED_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}

TAG = re.compile(r"<[a-zA-Z][^>]*>", re.DOTALL)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
STYLE_ATTRIBUTE = re.compile(r"\sstyle\s*=", re.IGNORECASE)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)
DATA_BLOCK = re.compile(r"""\stype\s*=\s*["']application/(ld\+)?json["']""", re.IGNORECASE)

ROOT = Path(__file__).resolve().parent.parent


def django_shell(code: str, **env: str | None) -> str:
    """Run ``code`` in ``manage.py shell`` in a fresh process with ``env`` changed (``None``
    removes a variable); returns the last line it printed."""
    environment = {**os.environ}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def parse_csp(header: str) -> dict[str, list[str]]:
    policy = {}
    for directive in filter(None, (part.strip() for part in header.split(";"))):
        name, *values = directive.split()
        policy[name] = values
    return policy


def inline_code(html: str) -> list[str]:
    """Everything in a page that a strict CSP blocks: inline scripts (JSON data blocks are not
    run, so they may stay), ``<style>`` elements, ``style=`` and ``on*=`` attributes and
    ``javascript:`` URLs."""
    found = []
    for match in SCRIPT_TAG.finditer(html):
        attributes = match.group(1)
        if " src=" not in f" {attributes}" and not DATA_BLOCK.search(attributes):
            found.append(match.group(0))
    found += re.findall(r"<style\b[^>]*>", html, re.IGNORECASE)
    for tag in TAG.findall(html):
        if INLINE_HANDLER.search(tag) or STYLE_ATTRIBUTE.search(tag):
            found.append(tag)
    found += re.findall(r"""(?:href|action|src)\s*=\s*["']\s*javascript:""", html, re.IGNORECASE)
    return found


@pytest.fixture
def demo(db):
    """The demo organisation (instances, an invoice, a top-up, telemetry) and a staff operator."""
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False  # the demo's launch waits in the broker
    try:
        call_command("load_demo_data", stdout=io.StringIO())
    finally:
        celery_app.conf.task_always_eager = eager
    user = User.objects.get(email="demo@example.com")
    org = Organization.objects.get(slug="demo")
    operator = factories.user("operator@example.com", is_staff=True, is_superuser=True)
    return {
        "user": user,
        "org": org,
        "operator": operator,
        "instance": Instance.objects.filter(organization=org).order_by("pk").first(),
        "invoice": Invoice.objects.filter(organization=org).order_by("pk").first(),
    }


def customer_pages(demo) -> list[str]:
    return [
        "/",
        "/catalog/",
        "/instances/",
        "/instances/launch/",
        f"/instances/{demo['instance'].pk}/",
        "/volumes/",
        "/usage/",
        "/billing/",
        "/billing/payments/",
        f"/billing/invoices/{demo['invoice'].pk}/",
        "/ssh-keys/",
        "/api-keys/",
        "/members/",
        "/audit/",
        "/settings/",
        "/account/",
        "/account/password/",
        "/organizations/new/",
        "/no-such-page/",
    ]


def staff_pages(demo) -> list[str]:
    return [
        "/finance/",
        "/admin/",
        "/admin/compute/instance/",
        f"/admin/compute/instance/{demo['instance'].pk}/change/",
        f"/admin/accounts/organization/{demo['org'].pk}/change/",
        f"/admin/billing/invoice/{demo['invoice'].pk}/change/",
        f"/admin/catalog/instancetype/{InstanceType.objects.order_by('pk').first().pk}/change/",
        "/admin/catalog/price/add/",
        "/admin/catalog/host/register/",
        "/api/docs/",
    ]


ANONYMOUS_PAGES = ["/login/", "/signup/", "/password-reset/", "/catalog/", "/invitations/accept/"]


def test_every_page_has_a_strict_csp_and_no_inline_code(demo):
    """One walk over the demo data (loading it takes a while): full pages, an htmx partial and
    the API docs' start-up script."""
    customer, staff = Client(), Client()
    customer.force_login(demo["user"])
    staff.force_login(demo["operator"])
    visits = [(Client(), path) for path in ANONYMOUS_PAGES]
    visits += [(customer, path) for path in customer_pages(demo)]
    visits += [(staff, path) for path in staff_pages(demo)]
    problems = {}
    for client, path in visits:
        response = client.get(path)
        assert response.status_code in (200, 400, 404), (path, response.status_code)
        assert response["Content-Type"].startswith("text/html"), path
        policy = parse_csp(response.get("Content-Security-Policy", ""))
        assert policy == EXPECTED_CSP, (path, policy)
        if found := inline_code(response.content.decode()):
            problems[path] = found
    assert not problems, json.dumps(problems, indent=1)

    partial = customer.get(f"/instances/{demo['instance'].pk}/row/", HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    assert parse_csp(partial["Content-Security-Policy"]) == EXPECTED_CSP
    assert not inline_code(partial.content.decode())

    # The API docs page loads its start-up script from ?script (SpectacularSwaggerSplitView).
    assert '<script src="/api/docs/?script="></script>' in staff.get("/api/docs/").content.decode()
    script = staff.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()


@pytest.mark.django_db
def test_a_refused_form_csrf_check_answers_a_page_without_inline_code():
    """Django's own CSRF failure page carries an inline <style> (nonce-based); the portal's
    page needs nothing the policy forbids."""
    response = Client(enforce_csrf_checks=True).post("/login/", {"email": "a@b.c"})
    assert response.status_code == 403
    html = response.content.decode()
    assert "Request refused" in html and inline_code(html) == []
    assert parse_csp(response["Content-Security-Policy"]) == EXPECTED_CSP


def test_the_htmx_configuration_forbids_eval_inline_styles_and_swapped_scripts(org, owner):
    client = Client()
    client.force_login(owner)
    html = client.get("/").content.decode()
    config = json.loads(re.search(r"""<meta name="htmx-config" content='([^']*)'>""", html)[1])
    assert config["allowEval"] is False
    assert config["includeIndicatorStyles"] is False
    assert config["allowScriptTags"] is False


def test_with_stripe_forms_may_also_go_to_stripe_checkout():
    code = "from django.conf import settings; print(' '.join(settings.SECURE_CSP['form-action']))"
    assert django_shell(code, PAYMENT_PROVIDER="stripe") == "'self' https://checkout.stripe.com"
    assert django_shell(code, PAYMENT_PROVIDER="fake") == "'self'"


# --- cookies and HSTS with production defaults ----------------------------------------------

PRODUCTION_PROBE = """
import json
from django.conf import settings
from django.test import Client
client = Client()
response = client.get("/login/", secure=True)
plain = client.get("/login/")
print(json.dumps({
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "csrf_cookie_secure": settings.CSRF_COOKIE_SECURE,
    "csrf_cookie_flag": bool(response.cookies["csrftoken"]["secure"]),
    "hsts": response.get("Strict-Transport-Security"),
    "plain_status": plain.status_code,
    "plain_location": plain.get("Location"),
    "csp": response.get("Content-Security-Policy"),
}))
"""


def test_production_defaults_set_secure_cookies_hsts_and_redirect_to_https():
    """With DEBUG off and nothing overridden (make test overrides the cookie and redirect
    settings for the plain-HTTP test server, so this runs in a fresh process without them)."""
    probe = json.loads(
        django_shell(
            PRODUCTION_PROBE,
            DEBUG="0",
            SECRET_KEY="s" * 50,
            ALLOWED_HOSTS="testserver",
            SESSION_COOKIE_SECURE=None,
            CSRF_COOKIE_SECURE=None,
            SECURE_SSL_REDIRECT=None,
            SECURE_HSTS_SECONDS=None,
        )
    )
    assert probe["session_cookie_secure"] is True
    assert probe["csrf_cookie_secure"] is True
    assert probe["csrf_cookie_flag"] is True
    assert probe["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert probe["plain_status"] == 301
    assert probe["plain_location"] == "https://testserver/login/"
    assert "default-src 'self'" in probe["csp"]


# --- hostile host reports --------------------------------------------------------------------


@pytest.fixture
def operator(db):
    return factories.user("operator@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def region(db):
    return catalog_services.region_ensure(code="us-east-1", name="Virginia", country="US")


@pytest.mark.parametrize(
    "report", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"]
)
def test_hostile_xml_reports_are_refused_with_a_stable_code(operator, region, report):
    with pytest.raises(InvalidInput) as refused:
        catalog_services.host_register(
            name="hostile", region=region, report=report, vcpus=8, ram_gib=64
        )
    assert (refused.value.status, refused.value.code) == (400, "report_invalid")
    assert "forbidden XML features" in refused.value.message
    assert "root:" not in refused.value.message  # nothing of /etc/passwd leaks

    hosts = Host.objects.count()
    staff = Client()
    staff.force_login(operator)
    response = staff.post(
        "/admin/catalog/host/register/",
        {
            "name": "hostile",
            "region": region.pk,
            "vcpus": "8",
            "ram_gib": "64",
            "report": SimpleUploadedFile("report.xml", report),
        },
    )
    assert "forbidden XML features" in " ".join(response.context["form"].errors["report"])
    assert Host.objects.count() == hosts


def test_an_oversized_report_is_refused_before_it_is_read_or_parsed(operator, region):
    staff = Client()
    staff.force_login(operator)
    with (
        mock.patch("portal.catalog.services.parse_nvidia_smi_report") as parse,
        mock.patch("django.core.files.uploadedfile.TemporaryUploadedFile.read") as read,
    ):
        response = staff.post(
            "/admin/catalog/host/register/",
            {
                "name": "huge",
                "region": region.pk,
                "vcpus": "8",
                "ram_gib": "64",
                # larger than FILE_UPLOAD_MAX_MEMORY_SIZE, so it is spooled to a temporary file
                "report": SimpleUploadedFile("report.xml", b"<" * (3 * MAX_REPORT_BYTES)),
            },
        )
    assert "at most 2 MiB" in " ".join(response.context["form"].errors["report"])
    parse.assert_not_called()
    read.assert_not_called()
    assert not Host.objects.filter(name="huge").exists()
