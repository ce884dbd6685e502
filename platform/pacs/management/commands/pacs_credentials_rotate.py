from django.core.management.base import BaseCommand, CommandError

from common.exceptions import ApplicationError
from pacs.services.sources import pacs_credentials_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt the stored PACS passwords with the first key of PACS_CREDENTIALS_KEY (new key first, "
        "old key after it, comma-separated); then the old key can be removed."
    )

    def handle(self, *args, **options):
        try:
            count = pacs_credentials_rotate()
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"{count} PACS password(s) re-encrypted with the first key.")
