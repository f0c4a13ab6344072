"""The layering of the README's Architecture section holds: import-linter's contracts (in
pyproject.toml) over every import, those inside functions included."""

import re
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)


LINT_IMPORTS = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        LINT_IMPORTS,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_them(tmp_path):
    # A copy of the tree in which catalog reaches up into billing from inside a function.
    for package in ("portal", "billing"):
        subprocess.run(["cp", "-r", str(ROOT / package), str(tmp_path / package)], check=True)
    probe = tmp_path / "portal" / "catalog" / "selectors.py"
    probe.write_text(probe.read_text() + "\n\ndef _probe():\n    from billing import models\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "portal.catalog.selectors -> billing.models" in result.stdout


MONEY_NAME = re.compile(
    r"(price|amount|balance|total|burn|cost|hourly|monthly|spend|credit|per_hour|per_gpu|to_date)",
    re.I,
)
FLOATFORMAT = re.compile(r"\{\{\s*([\w.]+)\s*\|\s*floatformat")


def test_templates_write_money_with_the_money_filters_only():
    """``floatformat`` rounds by its own rule; amounts go through ``{% load money %}``."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "templates").rglob("*.html"))
        for name in FLOATFORMAT.findall(path.read_text())
        if MONEY_NAME.search(name.rsplit(".", 1)[-1])
    ]
    assert offenders == []
