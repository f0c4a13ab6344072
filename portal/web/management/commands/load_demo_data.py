import os

from django.core.management.base import BaseCommand
from django.db import transaction

from billing.demo import load_billing_demo
from portal.accounts import services
from portal.accounts.models import Membership, Organization, SshKey, User
from portal.accounts.roles import Role
from portal.accounts.types import Actor
from portal.catalog.demo import load_demo_catalog
from portal.metering.services import no_gpu_demo_prices
from portal.metering.telemetry import demo_telemetry

DEMO_EMAIL = "demo@example.com"
DEMO_SLUG = "demo"
DEMO_SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyURDUFmjUDgU+a0scWgOXjY1rfEIaKXlgjnwuJdbcV demo@laptop"
)


class Command(BaseCommand):
    help = (
        "Create the demo user, organisation and SSH key, the demo catalog (with the no-GPU "
        "mode's prices), billing history and GPU telemetry (safe to run again)."
    )

    def handle(self, *args, **options):
        password = os.environ.get("DEMO_PASSWORD", "demo-gpu-cloud")
        with transaction.atomic():
            user = User.objects.filter(email=DEMO_EMAIL).first()
            if user is None:
                user = User.objects.create_user(
                    email=DEMO_EMAIL, password=password, full_name="Demo User"
                )
            elif not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
            if user.email_verified_at is None:
                from django.utils import timezone

                user.email_verified_at = timezone.now()
                user.save(update_fields=["email_verified_at"])
            org = Organization.objects.filter(slug=DEMO_SLUG).first()
            if org is None:
                org = services.organization_create(
                    user=user,
                    name="Demo Lab",
                    slug=DEMO_SLUG,
                    billing_email="billing@example.com",
                    country="US",
                )
            Membership.objects.get_or_create(
                user=user, organization=org, defaults={"role": Role.OWNER}
            )
            if not SshKey.objects.filter(organization=org).exists():
                services.ssh_key_create(
                    actor=Actor.system(org), name="demo-laptop", public_key=DEMO_SSH_KEY
                )
        self.stdout.write(load_demo_catalog())
        self.stdout.write(no_gpu_demo_prices())
        self.stdout.write(load_billing_demo(org))
        self.stdout.write(demo_telemetry(organization=org))
        self.stdout.write(f"Demo login: {DEMO_EMAIL} / {password} (organisation '{DEMO_SLUG}')")
