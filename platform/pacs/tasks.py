"""Thin Celery tasks around the PACS services (routed to queue cpu by CELERY_TASK_ROUTES)."""

import logging

from celery import shared_task
from django.utils import timezone

from common.exceptions import TransientError

log = logging.getLogger(__name__)

# A PACS outage: back off from 30 s to 15 min, about two hours in all, then give up; the next
# sync queues lost work again (studies.services.REQUEUE_AFTER).
RETRY_TRANSIENT = dict(
    acks_late=True, autoretry_for=(TransientError,), retry_backoff=30, retry_backoff_max=900, max_retries=8
)


@shared_task(acks_late=True)
def pacs_sources_poll() -> None:
    """Beat: start a sync of every enabled source whose interval has passed."""
    from pacs.selectors import pacs_sources_due

    for source_id in pacs_sources_due(now=timezone.now()):
        pacs_source_sync.delay(source_id)


@shared_task(**RETRY_TRANSIENT)
def pacs_source_sync(source_id: int) -> dict:
    from pacs.services.sync import SyncAlreadyRunning
    from pacs.services.sync import pacs_source_sync as sync

    try:
        result = sync(source_id=source_id)
    except SyncAlreadyRunning as exc:
        log.info("%s", exc.message)
        return {"skipped": exc.message}
    for series_id in result.series_to_ingest:
        series_ingest.delay(series_id)
    return {
        "studies_seen": result.studies_seen,
        "queued": len(result.series_to_ingest),
        "studies_gone": result.studies_gone,
    }


@shared_task(**RETRY_TRANSIENT)
def series_ingest(series_id: int) -> None:
    from pacs.services.ingest import series_ingest as ingest

    ingest(series_id=series_id)
