"""API request latency and query count for an authenticated list call.

Run: DEBUG=1 .venv/bin/python bench/api_latency.py [--requests 500] [--keys 200]
Uses a throwaway in-memory SQLite database (or DATABASE_URL's server, in a test database).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--keys", type=int, default=200)
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from rest_framework.test import APIClient

        from portal.accounts import services
        from portal.accounts.models import Organization
        from portal.accounts.types import Actor
        from tests import factories

        org = Organization.objects.create(
            name="Bench", slug="bench", billing_email="b@x.com", country="US"
        )
        actor = Actor.system(org)
        for _ in range(args.keys):
            services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
        _, secret = services.api_key_create(actor=actor, name="bench", role="viewer")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        url = "/api/v1/ssh-keys?page_size=50"
        client.get(url)  # warm up
        with factories.QueryCounter() as queries:
            client.get(url)
        timings = []
        for _ in range(args.requests):
            start = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        timings.sort()
        print(f"database: {connection.vendor}; {args.keys} SSH keys; GET {url} x {args.requests}")
        print(
            f"median {statistics.median(timings):.2f} ms, p95 {timings[int(len(timings) * 0.95)]:.2f} ms, "
            f"max {timings[-1]:.2f} ms; {queries.n} queries per request"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
