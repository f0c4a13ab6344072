#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    if "SECRET_KEY" not in os.environ:
        # A developer's machine (production always sets SECRET_KEY): run with the development
        # defaults rather than refuse to start. The web server (wsgi.py) never does this.
        os.environ.setdefault("DEBUG", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
