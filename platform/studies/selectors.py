"""Reads on studies, series and volumes."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from studies.models import Series, Study

RETRYABLE_ERROR_KINDS = ("pacs_unavailable",)


def study_instance_counts(*, source_id: int) -> dict[str, int]:
    """StudyInstanceUID -> instance count as last examined, for one source."""
    return dict(Study.objects.filter(source_id=source_id).values_list("study_instance_uid", "num_instances"))


def study_uids_gone(*, source_id: int) -> set[str]:
    """StudyInstanceUIDs of the source's studies that a sync found deleted from the PACS."""
    return set(
        Study.objects.filter(source_id=source_id, gone_at__isnull=False).values_list(
            "study_instance_uid", flat=True
        )
    )


def series_ids_unfinished(*, source_id: int, idle_for: timedelta = timedelta(0)) -> list[int]:
    """Series not built yet (pending, mid-ingest, or failed on a PACS outage) whose row has not
    changed for ``idle_for``: with zero, every unfinished series. Series gone from the PACS are left."""
    unfinished = Q(status__in=[Series.Status.PENDING, Series.Status.INGESTING]) | Q(
        status=Series.Status.ERROR, error_kind__in=RETRYABLE_ERROR_KINDS
    )
    return list(
        Series.objects.filter(
            unfinished,
            study__source_id=source_id,
            gone_at__isnull=True,
            updated_at__lte=timezone.now() - idle_for,
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
