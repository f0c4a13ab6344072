"""Every error code comes from a registry, and the API schema documents every registered code."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.test import Client

from portal.errors import all_codes

ROOT = Path(settings.BASE_DIR)
PACKAGES = ("portal", "billing")
# Calls that take an error code: the portal's errors, Django's and DRF's ValidationError, and
# the per-event refusals of usage ingestion.
ERROR_CALL = re.compile(
    r"(Error|Input|Denied|NotFound|Conflict|Throttled|Exceeded|Unavailable|Required|Declined"
    r"|Invalid|Transition|Rejection|reject)$"
)


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def _called_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _literal_codes(tree: ast.AST):
    """(line, text) of each error code written as a bare string instead of a registry member."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ERROR_CALL.search(_called_name(node)):
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "code" and isinstance(value, ast.Constant):
                    yield node.lineno, value.value
            first = node.args[0] if node.args else None
            if _called_name(node) == "reject" and isinstance(first, ast.Constant):
                yield node.lineno, first.value
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = []
                if isinstance(statement, ast.Assign):
                    targets, value = statement.targets, statement.value
                elif isinstance(statement, ast.AnnAssign):
                    targets, value = [statement.target], statement.value
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if "code" in names and isinstance(value, ast.Constant):
                    yield statement.lineno, value.value


def test_no_error_code_is_a_bare_string():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [
            f"{path.relative_to(ROOT)}:{line}: {text!r}" for line, text in _literal_codes(tree)
        ]
    assert found == [], "error codes must be members of the app's registry:\n" + "\n".join(found)


def test_the_scan_finds_a_bare_code():
    tree = ast.parse(
        "class E(Conflict):\n    code = 'x'\n"
        "raise InvalidInput('m', code='y')\n"
        "reject('z', 'why')\n"
        "raise InvalidInput('m', code=Codes.OK)\n"
    )
    assert sorted(text for _, text in _literal_codes(tree)) == ["x", "y", "z"]


@pytest.mark.django_db
def test_the_schema_documents_every_code():
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    documented = schema["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    assert documented == all_codes()
    assert {"invalid", "not_authenticated", "ssh_key_duplicate", "capacity_unavailable"} <= set(
        documented
    )
