from django.core.management.base import BaseCommand

from portal.accounts.roles import matrix_as_markdown


class Command(BaseCommand):
    help = "Print the role permission matrix as a Markdown table (as in the README)."

    def handle(self, *args, **options):
        self.stdout.write(matrix_as_markdown())
