"""Writes on studies, series and volumes. The PACS sync and ingest call these; nothing else writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from pacs.models import PacsSource
from studies.models import Series, Study, Volume

# A series queued or mid-ingest without progress for this long is taken to be lost (its task or its
# worker died) and is queued again. Queued work must not be re-queued on every poll of a backlog.
REQUEUE_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class VolumeRecord:
    """What the ingest learned about one built volume (the file is already in the media store)."""

    path: str
    sha256: str
    shape: list[int]
    spacing: list[float]
    affine: list[list[float]]
    dtype: str
    nbytes: int
    sop_instance_uids: list[str]
    frame_numbers: list[int | None]
    frame_of_reference_uid: str
    warnings: list[str]
    source_slices: list[int] = field(default_factory=list)  # resampled: nearest slice per source instance
    spacing_range: list[float] | None = None  # resampled: acquired steps along the normal, least and largest


def study_upsert(
    *,
    source: PacsSource,
    study_instance_uid: str,
    patient_id: str,
    study_date: dt.date | None,
    description: str,
    modalities: str,
    num_series: int,
) -> Study:
    """Create or refresh a study's header fields. ``num_instances`` moves only via study_mark_examined."""
    study, _ = Study.objects.update_or_create(
        source=source,
        study_instance_uid=study_instance_uid,
        defaults={
            "patient_id": patient_id[:64],
            "study_date": study_date,
            "description": description[:256],
            "modalities": modalities[:64],
            "num_series": num_series,
            "gone_at": None,  # listed again: it returns
        },
    )
    return study


@transaction.atomic
def study_mark_gone(*, source: PacsSource, study_instance_uid: str) -> Study | None:
    """A study the PACS no longer has: it and its series are marked gone; their volumes, and the cases
    and masks on them, are kept. Returns it (None when unknown or already gone)."""
    study = (
        Study.objects.select_for_update()
        .filter(source=source, study_instance_uid=study_instance_uid, gone_at__isnull=True)
        .first()
    )
    if study is None:
        return None
    now = timezone.now()
    study.gone_at = now
    study.save(update_fields=["gone_at", "updated_at"])
    study.series.filter(gone_at__isnull=True).update(gone_at=now, updated_at=now)
    return study


def series_mark_gone(*, study: Study, listed_series_uids: set[str]) -> int:
    """Mark the study's series that the PACS no longer lists as gone (kept with their volumes);
    returns how many were marked."""
    now = timezone.now()
    return (
        study.series.filter(gone_at__isnull=True)
        .exclude(series_instance_uid__in=listed_series_uids)
        .update(gone_at=now, updated_at=now)
    )


def study_mark_examined(*, study: Study, num_instances: int) -> None:
    """Record the instance count the PACS reported once all of the study's series are known."""
    Study.objects.filter(pk=study.pk).update(num_instances=num_instances, updated_at=timezone.now())


def series_upsert(
    *,
    study: Study,
    series_instance_uid: str,
    modality: str,
    description: str,
    series_number: int | None,
    num_instances: int,
    skip_reason: str = "",
) -> tuple[Series, bool]:
    """Create or refresh a series; returns it and whether it needs an ingest now (new, or its
    instance count changed). ``skip_reason`` marks series that are not images (SEG, SR, ...): they
    are listed, never built.
    """
    series, created = Series.objects.select_for_update().get_or_create(
        study=study,
        series_instance_uid=series_instance_uid,
        defaults={
            "modality": modality[:16],
            "description": description[:256],
            "series_number": series_number,
            "num_instances": num_instances,
        },
    )
    changed = not created and series.num_instances != num_instances
    series.gone_at = None  # listed: it is in the PACS (again)
    series.modality, series.description = modality[:16], description[:256]
    series.series_number, series.num_instances = series_number, num_instances
    needs_ingest = False
    if skip_reason:
        series.status, series.error_kind, series.error_message = (
            Series.Status.SKIPPED,
            "not_image",
            skip_reason,
        )
    elif created or changed or series.status == Series.Status.SKIPPED:
        series.status, series.error_kind, series.error_message = Series.Status.PENDING, "", ""
        needs_ingest = True
    series.save()
    return series, needs_ingest


def series_ingest_start(*, series_id: int) -> Series | None:
    """Claim a series for ingest; None when there is nothing to do (already built for this count)."""
    with transaction.atomic():
        series = Series.objects.select_for_update().select_related("study__source").get(pk=series_id)
        if series.status == Series.Status.SKIPPED or series.gone_at is not None:
            return None
        if series.status == Series.Status.READY and series.ingested_num_instances == series.num_instances:
            return None
        series.status = Series.Status.INGESTING
        series.attempts += 1
        series.save(update_fields=["status", "attempts", "updated_at"])
        return series


def series_mark_error(*, series_id: int, kind: str, message: str, skipped: bool = False) -> None:
    """Record why a series cannot be built; its existing volumes (if any) stay as they were."""
    Series.objects.filter(pk=series_id).update(
        status=Series.Status.SKIPPED if skipped else Series.Status.ERROR,
        error_kind=kind[:32],
        error_message=message,
        updated_at=timezone.now(),
    )


@transaction.atomic
def series_volumes_replace(*, series_id: int, volumes: list[VolumeRecord], num_instances: int) -> Series:
    """Make ``volumes`` the series' volumes (by index; rows of unchanged content are kept) and mark it ready.

    Runs under a row lock, so two workers finishing the same series leave one set of rows.
    """
    series = Series.objects.select_for_update().get(pk=series_id)
    for index, record in enumerate(volumes):
        Volume.objects.update_or_create(series=series, index=index, defaults=asdict(record))
    Volume.objects.filter(series=series, index__gte=len(volumes)).delete()
    series.status = Series.Status.READY
    series.error_kind = series.error_message = ""
    series.ingested_num_instances = num_instances
    series.ingested_at = timezone.now()
    series.save()
    return series
