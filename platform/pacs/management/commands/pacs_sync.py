import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from common.exceptions import ApplicationError
from pacs.models import PacsSource
from pacs.services.ingest import series_ingest_many
from pacs.services.sync import pacs_source_sync
from studies.selectors import series_ids_unfinished, series_status_counts


class Command(BaseCommand):
    help = "Sync PACS sources now, in this process: discover new studies and build their volumes."

    def add_arguments(self, parser):
        parser.add_argument("--source", help="Name of one source (default: every enabled source).")

    def handle(self, *args, source=None, **options):
        sources = PacsSource.objects.filter(**({"name": source} if source else {"enabled": True}))
        if source and not sources.exists():
            raise CommandError(f"No PACS source named '{source}'.")
        for src in sources:
            try:
                result = pacs_source_sync(source_id=src.id)
            except ApplicationError as exc:
                raise CommandError(exc.message) from exc
            # This process is the ingester: it takes over every unfinished series now, including
            # those a killed run left mid-way, instead of waiting for them to look lost.
            todo = series_ids_unfinished(source_id=src.id)
            with tqdm(total=len(todo), desc=f"Ingest from {src.name}", unit="series") as bar:
                outages = series_ingest_many(series_ids=todo, done=lambda: bar.update(1))
            self.stdout.write(
                f"{src.name}: {result.studies_seen} studies in the PACS, {result.studies_examined} new or "
                f"changed, {result.studies_gone} gone from it, {len(todo)} series ingested."
            )
            if outages:
                raise CommandError(f"{src.name}: {outages} series could not be retrieved (PACS unavailable).")
        self.stdout.write("Series by status: " + json.dumps(series_status_counts()))
