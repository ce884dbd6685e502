from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet

from pacs.models import PacsSource
from studies.models import Series

# Series errors that say the PACS failed us (not that the images are bad): the source is not healthy.
PACS_ERROR_KINDS = ("pacs_unavailable", "pacs_refused")
# The detail page lists at most this many series of each kind.
DETAIL_LIMIT = 200


@dataclass(frozen=True)
class SourceHealth:
    """How a source is doing, in one word (``state``: never, ok, degraded, error) and why."""

    state: str
    label: str
    reason: str


@dataclass(frozen=True)
class SkipReason:
    reason: str
    count: int


@dataclass(frozen=True)
class SourceDetail:
    source: PacsSource
    health: SourceHealth
    failing: list[Series]  # PACS errors first, then bad images; newest first
    n_failing: int
    skipped: list[SkipReason]
    gone: list[Series]
    n_gone: int


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


def _with_counts(qs: QuerySet[PacsSource]) -> QuerySet[PacsSource]:
    listed = Q(studies__series__gone_at__isnull=True)
    return qs.annotate(
        n_studies=Count("studies", filter=Q(studies__gone_at__isnull=True), distinct=True),
        n_ready=Count("studies__series", filter=listed & Q(studies__series__status="ready")),
        n_error=Count("studies__series", filter=listed & Q(studies__series__status="error")),
        n_pacs_failing=Count(
            "studies__series",
            filter=listed
            & Q(studies__series__status="error", studies__series__error_kind__in=PACS_ERROR_KINDS),
        ),
        n_skipped=Count("studies__series", filter=listed & Q(studies__series__status="skipped")),
        n_gone=Count("studies__series", filter=Q(studies__series__gone_at__isnull=False)),
    )


def source_health(source: PacsSource) -> SourceHealth:
    """From the source's last sync and its series (``source`` annotated by ``_with_counts``): ok only
    when the last sync succeeded and no series is failing because of the PACS."""
    if source.sync_status == PacsSource.SyncStatus.ERROR or (
        source.last_error and not source.last_success_at
    ):
        return SourceHealth("error", "sync failing", source.last_error)
    if source.last_success_at is None and source.last_sync_finished_at is None:
        running = source.sync_status == PacsSource.SyncStatus.RUNNING
        return SourceHealth("never", "first sync running" if running else "never synced", "")
    if source.n_pacs_failing:
        return SourceHealth(
            "degraded",
            "series failing",
            f"{source.n_pacs_failing} series could not be retrieved from the PACS (unavailable or refused); "
            "they are retried.",
        )
    return SourceHealth("ok", "ok", "")


def pacs_source_list() -> list[PacsSource]:
    """Sources with how much of each has landed (studies; series ready, failed, skipped, gone) and
    their health (``.health``)."""
    sources = list(_with_counts(PacsSource.objects.all()).order_by("name"))
    for source in sources:
        source.health = source_health(source)
    return sources


def pacs_source_detail(*, source_id: int) -> SourceDetail | None:
    """One source's health page: last success and error, failing series with their errors, skipped
    series grouped by reason, series gone from the PACS."""
    source = _with_counts(PacsSource.objects.filter(pk=source_id)).first()
    if source is None:
        return None
    series = Series.objects.filter(study__source=source).select_related("study")
    failing = series.filter(status=Series.Status.ERROR, gone_at__isnull=True)
    pacs_first = Q(error_kind__in=PACS_ERROR_KINDS)
    ordered = list(failing.filter(pacs_first).order_by("-updated_at")[:DETAIL_LIMIT])
    ordered += list(failing.exclude(pacs_first).order_by("-updated_at")[: DETAIL_LIMIT - len(ordered)])
    skipped = (
        series.filter(status=Series.Status.SKIPPED, gone_at__isnull=True)
        .values("error_message")
        .annotate(n=Count("id"))
        .order_by("-n", "error_message")
    )
    gone = series.filter(gone_at__isnull=False)
    return SourceDetail(
        source=source,
        health=source_health(source),
        failing=ordered,
        n_failing=failing.count(),
        skipped=[SkipReason(row["error_message"], row["n"]) for row in skipped],
        gone=list(gone.order_by("-gone_at")[:DETAIL_LIMIT]),
        n_gone=gone.count(),
    )
