import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from common.exceptions import ApplicationError
from pacs.orthanc import orthanc_wait_ready
from pacs.services.demo import pacs_demo_load
from pacs.services.sources import pacs_source_ensure_local


class Command(BaseCommand):
    help = "Load the demo studies (shared/data DICOM + 200 hippocampus MR studies) into the local Orthanc."

    def add_arguments(self, parser):
        parser.add_argument("--shared-data", type=Path, default=os.environ.get("ANNOTATOR_SHARED_DATA"))
        parser.add_argument(
            "--hippocampus-limit", type=int, default=None, help="Load only the first N cases."
        )

    def handle(self, *args, shared_data, hippocampus_limit, **options):
        if shared_data is None:
            shared_data = settings.REPO_DIR.parent / "shared" / "data"
        source = pacs_source_ensure_local()
        try:
            orthanc_wait_ready(
                http_port=settings.ORTHANC_HTTP_PORT,
                auth=(settings.ORTHANC_USERNAME, settings.ORTHANC_PASSWORD),
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        with tqdm(desc="Demo studies into Orthanc", unit="study") as bar:
            try:
                counts = pacs_demo_load(
                    source=source,
                    shared_data=Path(shared_data),
                    hippocampus_limit=hippocampus_limit,
                    progress=lambda label: bar.update(1),
                )
            except (ApplicationError, FileNotFoundError) as exc:
                raise CommandError(getattr(exc, "message", str(exc))) from exc
        self.stdout.write(
            f"Demo PACS: {counts['studies_sent']} studies sent ({counts['instances_sent']} instances), "
            f"{counts['studies_present']} already there."
        )
