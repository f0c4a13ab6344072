"""The portal speaks English and Simplified Chinese: every string a person reads is marked for
translation, the Chinese catalogue has every marked string translated, and the language follows
the user's choice, the cookie or the browser, in pages and in API messages (never codes)."""

import ast
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import polib
import pytest
from django.core.management import call_command
from django.template.base import Lexer, TokenType
from django.test import override_settings
from django.urls import reverse
from django.utils import translation

from portal import i18n_sources
from tests import factories
from tests.conftest import missing

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"

# Words kept as they are in both languages: units, codes, names of standards and products.
KEPT = {
    "GPU", "GPUs", "CPU", "vCPU", "vCPUs", "MIG", "SSH", "API", "GB", "TB", "GiB", "MiB", "TiB",
    "TFLOPS", "FP16", "FP8", "BF16", "NVLink", "PCIe", "SXM", "HBM3", "HBM3e", "NVIDIA",
    "USD", "CNY", "EUR", "UTC", "ID", "PDF", "CSV", "XLSX", "XML", "UBL", "CII", "JSON", "URL",
    "HTTP", "HTTPS", "OpenAPI", "Stripe", "Factur-X", "ZUGFeRD", "PEPPOL", "EN", "IBAN", "BIC",
    "SWIFT", "VAT", "Ubuntu", "CUDA", "PyTorch", "ed25519", "RSA", "ECDSA", "Swagger", "UI",
    "GPU Cloud",
}  # fmt: skip
WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*[A-Za-z]")
# Elements whose text is code or a machine's words, not prose.
RAW_ELEMENTS = {"script", "style", "code", "pre", "kbd", "samp"}
SHOWN_ATTRIBUTES = {"title", "alt", "placeholder", "aria-label", "data-confirm", "data-copied"}


def _prose(text: str) -> bool:
    """Whether ``text`` holds words a person reads that are not kept as they are."""
    return any(word not in KEPT for word in WORD.findall(text))


class _TextFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.raw_depth = 0
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in RAW_ELEMENTS:
            self.raw_depth += 1
        for name, value in attrs:
            if name in SHOWN_ATTRIBUTES and value and _prose(value):
                self.found.append(f'{name}="{value.strip()}"')
        kind = dict(attrs).get("type", "")
        if tag == "input" and kind in {"submit", "button"}:
            value = dict(attrs).get("value") or ""
            if _prose(value):
                self.found.append(f'value="{value}"')

    def handle_endtag(self, tag):
        if tag in RAW_ELEMENTS and self.raw_depth:
            self.raw_depth -= 1

    def handle_data(self, data):
        if not self.raw_depth and _prose(data):
            self.found.append(" ".join(data.split()))


def unmarked_text(source: str) -> list[str]:
    """The pieces of a template's text outside ``translate``/``blocktranslate`` that a person
    would read: text between tags and the shown attributes. Template variables and tags count as
    a placeholder, so ``{{ n }} GPUs`` is fine and ``{{ n }} hours`` is not."""
    kept: list[str] = []
    skipping: str | None = None
    for token in Lexer(source).tokenize():
        content = token.contents.split()[0] if token.contents.split() else ""
        if skipping:
            if token.token_type == TokenType.BLOCK and content == skipping:
                skipping = None
            kept.append(" \x00 ")
            continue
        if token.token_type == TokenType.BLOCK and content in {"blocktranslate", "blocktrans"}:
            skipping = "endblocktranslate" if content == "blocktranslate" else "endblocktrans"
        elif token.token_type == TokenType.BLOCK and content == "comment":
            skipping = "endcomment"
        elif token.token_type == TokenType.BLOCK and token.contents.split()[1:2] == ["bodyclass"]:
            skipping = "endblock"  # admin's CSS class names
        elif token.token_type == TokenType.TEXT:
            kept.append(token.contents)
            continue
        kept.append(" \x00 ")
    finder = _TextFinder()
    finder.feed("".join(kept).replace("\x00", "0"))
    return finder.found


def test_the_finder_sees_unmarked_text_and_passes_marked_text():
    assert unmarked_text("<p>Launch an instance</p>") == ["Launch an instance"]
    assert unmarked_text('<button aria-label="Copy the key">⧉</button>') == [
        'aria-label="Copy the key"'
    ]
    assert unmarked_text("<p>{{ n }} hours</p>") == ["0 hours"]
    assert unmarked_text('{% load i18n %}<p>{% translate "Launch" %}</p>') == []
    assert unmarked_text("<p>{% blocktranslate %}{{ n }} hours{% endblocktranslate %}</p>") == []
    assert unmarked_text("<td>{{ n }} GPUs · 80 GB</td><code>ssh ubuntu@host</code>") == []


def _templates() -> list[Path]:
    return sorted(p for p in (ROOT / "templates").rglob("*") if p.suffix in {".html", ".txt"})


def test_every_template_marks_its_text_for_translation():
    unmarked = {
        str(path.relative_to(ROOT)): found
        for path in _templates()
        if (found := unmarked_text(path.read_text()))
    }
    assert not unmarked, "text not marked for translation:\n" + "\n".join(
        f"{path}: {found[:5]}" for path, found in unmarked.items()
    )


# --- Python strings -------------------------------------------------------------------------

# Keyword arguments whose text a person reads, in forms, models, admin and errors.
SHOWN_KEYWORDS = {"label", "help_text", "verbose_name", "verbose_name_plural", "empty_label"}
SHOWN_KEYWORDS |= {"empty_value_display"}
# ``description=`` of admin actions and displays; ``message=`` of the portal's errors.
DESCRIBED_CALLS = {"action", "display"}
ERROR_CALLS = {"ValidationError", "InvalidInput", "PermissionDenied", "NotFound", "Conflict"}
ERROR_CALLS |= {"Throttled", "PaymentProviderError", "CardDeclined", "PortalError"}
MESSAGE_LEVELS = {"success", "error", "info", "warning", "debug"}


def _literal(node) -> bool:
    """A plain or formatted string literal: text that reaches a person untranslated."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _prose(node.value)
    return isinstance(node, ast.JoinedStr)


def _error_classes() -> set[str]:
    from portal.errors import PortalError

    def walk(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)

    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("errors", "services")
    return {cls.__name__ for cls in walk(PortalError)} | ERROR_CALLS


def unmarked_python(source: str, error_classes: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            if name in error_classes and node.args and _literal(node.args[0]):
                found.append((node.lineno, f"{name}(...)"))
            message = owner == "messages" and name in MESSAGE_LEVELS and len(node.args) > 1
            if message and _literal(node.args[1]):
                found.append((node.lineno, f"messages.{name}(...)"))
            for keyword in node.keywords:
                shown = keyword.arg in SHOWN_KEYWORDS
                shown |= keyword.arg == "description" and name in DESCRIBED_CALLS
                shown |= keyword.arg == "message" and name in error_classes
                if shown and _literal(keyword.value):
                    found.append((node.lineno, f"{keyword.arg}="))
        elif isinstance(node, ast.Assign) and _literal(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in {"default_message"}:
                    found.append((node.lineno, target.id))
    return found


def test_the_python_check_sees_unmarked_strings():
    classes = {"InvalidInput"}
    assert unmarked_python('raise InvalidInput("Bad name.", code=X)', classes) == [
        (1, "InvalidInput(...)")
    ]
    assert unmarked_python('raise InvalidInput(f"Bad {name}.")', classes)
    assert unmarked_python('messages.info(request, "Saved.")', classes)
    assert unmarked_python('forms.CharField(label="Name")', classes)
    assert not unmarked_python('raise InvalidInput(_("Bad name."), code=X)', classes)
    assert not unmarked_python('forms.CharField(label=_("Name"))', classes)


def _python_sources() -> list[Path]:
    return sorted(
        path
        for package in ("portal", "billing")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and "management" not in path.parts
    )


def test_every_python_string_shown_to_people_is_marked_for_translation():
    classes = _error_classes()
    unmarked = {
        str(path.relative_to(ROOT)): found
        for path in _python_sources()
        if (found := unmarked_python(path.read_text(), classes))
    }
    assert not unmarked, "strings not marked for translation:\n" + "\n".join(
        f"{path}: {found[:6]}" for path, found in unmarked.items()
    )


# --- the catalogue --------------------------------------------------------------------------


def _entries(po: polib.POFile) -> set[tuple[str | None, str, str]]:
    return {(e.msgctxt, e.msgid, e.msgid_plural) for e in po if not e.obsolete}


def test_the_catalogue_holds_every_marked_string(tmp_path, settings):
    """``make messages`` would find nothing new and drop nothing: the catalogue is the code's."""
    if not shutil.which("xgettext"):
        missing("gettext's xgettext is not installed (apt-get install gettext)")
    # makemessages writes into a ``locale`` folder it finds under the working directory, so it
    # runs on a copy of the sources: the repository's catalogue is only compared, never written.
    for tree in ("portal", "billing", "templates"):
        shutil.copytree(ROOT / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
    copy.parent.mkdir(parents=True)
    shutil.copy(CATALOGUE, copy)
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        args = i18n_sources.arguments()
        options = {
            "locale": i18n_sources.LOCALES,
            "extensions": i18n_sources.EXTENSIONS,
            "ignore_patterns": i18n_sources.IGNORE,
            "no_obsolete": "--no-obsolete" in args,
            "verbosity": 0,
        }
        call_command("makemessages", **options)
    finally:
        os.chdir(here)
    fresh, committed = _entries(polib.pofile(str(copy))), _entries(polib.pofile(str(CATALOGUE)))
    new, gone = sorted(fresh - committed, key=str), sorted(committed - fresh, key=str)
    assert not new, f"run `make messages` and translate: {len(new)} new strings, e.g. {new[:8]}"
    assert not gone, f"run `make messages`: {len(gone)} strings no longer used, e.g. {gone[:8]}"


PLACEHOLDER = re.compile(r"%\((\w+)\)[sdfr]|%[sdfr]|\{(\w*)\}")


def test_every_string_has_a_chinese_translation_that_keeps_its_placeholders():
    po = polib.pofile(str(CATALOGUE))
    untranslated = [e.msgid for e in po.untranslated_entries() if not e.obsolete]
    fuzzy = [e.msgid for e in po.fuzzy_entries()]
    assert not untranslated, f"{len(untranslated)} untranslated, e.g. {untranslated[:8]}"
    assert not fuzzy, f"{len(fuzzy)} fuzzy, e.g. {fuzzy[:8]}"
    wrong = []
    for entry in po.translated_entries():
        wanted = sorted(PLACEHOLDER.findall(entry.msgid))
        texts = list(entry.msgstr_plural.values()) if entry.msgid_plural else [entry.msgstr]
        if entry.msgid_plural:
            wanted = sorted(set(PLACEHOLDER.findall(entry.msgid_plural)) | set(wanted))
            wrong += [entry.msgid for t in texts if sorted(set(PLACEHOLDER.findall(t))) != wanted]
        else:
            wrong += [entry.msgid for t in texts if sorted(PLACEHOLDER.findall(t)) != wanted]
    assert not wrong, f"translations that lose or add a placeholder: {wrong[:8]}"


def test_the_compiled_catalogue_is_current():
    script = ROOT / "scripts" / "compile_messages.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- choosing the language ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_visitor_gets_the_language_the_browser_asks_for(client):
    page = client.get(reverse("accounts:login"), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9,en;q=0.5")
    assert page["Content-Language"] == "zh-hans"
    assert '<html lang="zh-hans">' in page.content.decode()
    english = client.get(reverse("accounts:login"), HTTP_ACCEPT_LANGUAGE="en-GB,en;q=0.9")
    assert '<html lang="en">' in english.content.decode()


@pytest.mark.django_db
def test_the_switcher_keeps_the_choice_on_the_user_over_the_browser(client):
    user = factories.user()
    client.force_login(user)
    answer = client.post(
        reverse("accounts:language_switch"),
        {"language": "zh-hans", "next": reverse("accounts:account")},
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert answer.status_code == 302 and answer["Location"] == reverse("accounts:account")
    user.refresh_from_db()
    assert user.language == "zh-hans"
    client.cookies.clear()  # another device: no cookie, an English browser
    client.force_login(user)
    page = client.get(reverse("accounts:account"), HTTP_ACCEPT_LANGUAGE="en")
    assert page["Content-Language"] == "zh-hans"


@pytest.mark.django_db
def test_an_unknown_language_is_refused_and_nothing_changes(client):
    user = factories.user()
    client.force_login(user)
    client.post(reverse("accounts:language_switch"), {"language": "xx", "next": "/"})
    user.refresh_from_db()
    assert user.language == ""


@pytest.mark.django_db
def test_api_messages_follow_accept_language_and_codes_do_not(api_client):
    english = api_client.get("/api/v1/instances", HTTP_ACCEPT_LANGUAGE="en")
    chinese = api_client.get("/api/v1/instances", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert english.status_code == chinese.status_code == 401
    assert english.json()["error"]["code"] == chinese.json()["error"]["code"]
    assert english.json()["error"]["message"] != chinese.json()["error"]["message"]


@override_settings(USE_TZ=True)
def test_dates_and_money_are_written_per_language():
    from datetime import date
    from decimal import Decimal

    from django.template import Context, Template

    template = Template(
        '{% load money %}{{ day|date }} · {{ day|date:"YEAR_MONTH_FORMAT" }} · '
        '{{ cny|money_in:"CNY" }} · {{ usd|money_in:"USD" }} · {{ neg|money_in:"CNY" }}'
    )
    context = Context(
        {
            "day": date(2026, 12, 4),
            "cny": Decimal("1234.5"),
            "usd": Decimal("1234.5"),
            "neg": Decimal("-12"),
        }
    )
    with translation.override("en"):
        assert template.render(context) == (
            "4 Dec 2026 · December 2026 · ¥1,234.50 · 1,234.50 USD · \u2212¥12.00"
        )
    with translation.override("zh-hans"):
        assert template.render(context) == (
            "2026年12月4日 · 2026年12月 · ¥1,234.50 · 1,234.50 USD · \u2212¥12.00"
        )
