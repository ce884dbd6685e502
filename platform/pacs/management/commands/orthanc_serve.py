import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pacs.orthanc import ORTHANC_BINARY, orthanc_check_installed, orthanc_write_config


class Command(BaseCommand):
    help = "Write the local Orthanc's config from settings and run Orthanc in the foreground (deploy/run.sh)."

    def handle(self, *args, **options):
        if not settings.ORTHANC_PASSWORD:
            raise CommandError("ORTHANC_PASSWORD is empty: deploy/run.sh writes one into var/secrets.env.")
        try:
            orthanc_check_installed()
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        config = orthanc_write_config(
            storage_dir=settings.ORTHANC_STORAGE_DIR,
            http_port=settings.ORTHANC_HTTP_PORT,
            username=settings.ORTHANC_USERNAME,
            password=settings.ORTHANC_PASSWORD,
            name="annotator-dev-pacs",
        )
        os.execv(ORTHANC_BINARY, [ORTHANC_BINARY, str(config)])
