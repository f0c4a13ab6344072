from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from portal.accounts import services
from portal.accounts.models import Organization
from portal.accounts.roles import Role
from portal.accounts.types import Actor
from portal.errors import PortalError


class Command(BaseCommand):
    help = "Create an API key for an organisation and print it, alone, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organisation slug.")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--name", default="cli", help="A name for the key.")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, **options):
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organisation with slug '{options['org']}'.")
        expires_at = None
        if options["expires_in_days"] is not None:
            expires_at = timezone.now() + timedelta(days=options["expires_in_days"])
        try:
            api_key, secret = services.api_key_create(
                actor=Actor.system(org),
                name=options["name"],
                role=options["role"],
                expires_at=expires_at,
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Created {options['role']} key '{api_key.name}' for {org.slug}.")
        self.stdout.write(secret)
