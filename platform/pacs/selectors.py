from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet

from pacs.models import PacsSource


def pacs_sources_due(*, now: datetime) -> list[int]:
    """Enabled sources whose poll interval has passed since their last sync started."""
    due = []
    for source in PacsSource.objects.filter(enabled=True).only(
        "id", "poll_interval_s", "last_sync_started_at"
    ):
        last = source.last_sync_started_at
        if last is None or now - last >= timedelta(seconds=source.poll_interval_s):
            due.append(source.id)
    return due


def pacs_source_list() -> QuerySet[PacsSource]:
    """Sources with how much of each has landed: studies, and series ready or failed."""
    return PacsSource.objects.annotate(
        n_studies=Count("studies", distinct=True),
        n_ready=Count("studies__series", filter=Q(studies__series__status="ready")),
        n_error=Count("studies__series", filter=Q(studies__series__status="error")),
    ).order_by("name")
