"""Reads on studies, series and volumes."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from studies.models import Series, Study
from studies.services import STALE_INGEST

RETRYABLE_ERROR_KINDS = ("pacs_unavailable",)


def study_instance_counts(*, source_id: int) -> dict[str, int]:
    """StudyInstanceUID -> instance count as last examined, for one source."""
    return dict(Study.objects.filter(source_id=source_id).values_list("study_instance_uid", "num_instances"))


def series_ids_to_ingest(*, source_id: int) -> list[int]:
    """Series to build: new or changed, left mid-ingest by a dead worker, or failed on a PACS outage."""
    stale = timezone.now() - STALE_INGEST
    return list(
        Series.objects.filter(study__source_id=source_id)
        .filter(
            Q(status=Series.Status.PENDING)
            | Q(status=Series.Status.INGESTING, updated_at__lt=stale)
            | Q(status=Series.Status.ERROR, error_kind__in=RETRYABLE_ERROR_KINDS)
        )
        .order_by("id")
        .values_list("id", flat=True)
    )


def study_list(*, status: str = "", query: str = "", source_id: int | None = None) -> QuerySet[Study]:
    """Studies for the worklist page, with their series and volumes prefetched and status counts."""
    qs = Study.objects.select_related("source").annotate(
        n_ready=Count("series", filter=Q(series__status=Series.Status.READY)),
        n_error=Count("series", filter=Q(series__status=Series.Status.ERROR)),
        n_pending=Count(
            "series", filter=Q(series__status__in=[Series.Status.PENDING, Series.Status.INGESTING])
        ),
    )
    if source_id:
        qs = qs.filter(source_id=source_id)
    if status:
        qs = qs.filter(series__status=status).distinct()
    if query:
        qs = qs.filter(
            Q(description__icontains=query) | Q(patient_id__icontains=query) | Q(study_instance_uid=query)
        )
    return qs.order_by("-study_date", "description", "id").prefetch_related("series__volumes")


def series_status_counts() -> dict[str, int]:
    return dict(Series.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
