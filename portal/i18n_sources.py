"""Where the portal's translatable strings are, for ``makemessages`` (``make messages``) and
for tests/test_i18n.py, which must agree: run as a module it prints the arguments."""

LOCALES = ["zh_Hans"]
EXTENSIONS = ["html", "txt", "py"]
# Not the portal's own text: tests, benchmarks, scripts, the catalogue itself and build output.
IGNORE = [
    "tests",
    "bench",
    "scripts",
    "locale",
    "staticfiles",
    "static",
    "var",
    "test-artifacts",
    "*/migrations/*",
]


def arguments() -> list[str]:
    args = [f"--locale={code}" for code in LOCALES]
    args += [f"--extension={ext}" for ext in EXTENSIONS]
    args += [f"--ignore={pattern}" for pattern in IGNORE]
    return [*args, "--no-obsolete"]


if __name__ == "__main__":
    print(" ".join(arguments()))
