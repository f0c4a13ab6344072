"""Compiles the translation catalogues (locale/<language>/LC_MESSAGES/*.po) into the .mo files
Django reads, with polib, so no gettext binaries are needed. Run by scripts/bootstrap.sh;
writes a .mo only when its .po is newer. ``--check`` exits 1 when a .mo is missing or stale."""

import sys
from pathlib import Path

import polib

LOCALE = Path(__file__).resolve().parent.parent / "locale"


def stale() -> list[Path]:
    return [
        po
        for po in sorted(LOCALE.glob("*/LC_MESSAGES/*.po"))
        if not po.with_suffix(".mo").exists()
        or po.with_suffix(".mo").stat().st_mtime < po.stat().st_mtime
    ]


def main() -> int:
    todo = stale()
    if "--check" in sys.argv:
        for po in todo:
            print(f"{po.relative_to(LOCALE.parent)} is not compiled", file=sys.stderr)
        return 1 if todo else 0
    for po in todo:
        polib.pofile(str(po)).save_as_mofile(str(po.with_suffix(".mo")))
        print(f"==> compiled {po.relative_to(LOCALE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
