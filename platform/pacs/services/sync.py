"""Discovery: which studies and series the PACS holds, compared with what we have (QIDO-RS only).

Incremental by instance counts: one paged QIDO over studies; only studies whose count changed are
asked for their series. An unchanged PACS costs one query per page. The count of a study is written
after its series, so a sync cut off anywhere is simply picked up by the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from common.exceptions import ApplicationError
from pacs import dicomweb as dw
from pacs.models import PacsSource
from studies.selectors import series_ids_unfinished, study_instance_counts, study_uids_gone
from studies.services import (
    REQUEUE_AFTER,
    series_mark_gone,
    series_upsert,
    study_mark_examined,
    study_mark_gone,
    study_upsert,
)

log = logging.getLogger(__name__)

SYNC_LEASE = timedelta(minutes=30)
# Studies missing from a listing that one sync asks the PACS about, one query each, before marking gone.
GONE_CHECKS_PER_SYNC = 200
# Series whose objects are not images: listed so people see them, never built into volumes.
NON_IMAGE_MODALITIES = {
    "SEG",
    "SR",
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "RTRECORD",
    "PR",
    "KO",
    "DOC",
    "REG",
    "RWV",
}


class SyncAlreadyRunning(ApplicationError):
    pass


@dataclass
class SyncResult:
    studies_seen: int = 0
    studies_examined: int = 0
    series_to_ingest: list[int] = field(default_factory=list)
    studies_gone: int = 0
    seconds: float = 0.0


def pacs_source_sync(*, source_id: int) -> SyncResult:
    """Bring the catalogue of studies/series up to date with the PACS; return the series to ingest:
    those new or changed in this run, and those whose earlier ingest was lost (REQUEUE_AFTER).

    Raises SyncAlreadyRunning when another sync holds the source, PacsUnavailable when the PACS is
    down (recorded on the source for people to see), PacsRequestError when it refuses.
    """
    start = time.monotonic()
    source = _lease_acquire(source_id)
    try:
        result = _discover(source)
    except ApplicationError as exc:
        _finish(source_id, error=exc.message)
        raise
    except Exception:
        _finish(source_id, error="The sync failed unexpectedly; see the worker log.")
        raise
    _finish(source_id, error="")
    result.seconds = time.monotonic() - start
    return result


def _discover(source: PacsSource) -> SyncResult:
    client = dw.client_for(source)
    known = study_instance_counts(source_id=source.id)
    gone = study_uids_gone(source_id=source.id)
    result = SyncResult()
    queued: set[int] = set()
    listed: set[str] = set()
    for item in dw.search_studies(source, client):
        result.studies_seen += 1
        uid = dw.value(item, dw.STUDY_UID)
        listed.add(uid)
        count = dw.value(item, dw.STUDY_NUM_INSTANCES)
        # A study that returns is examined again, whatever its count: its series come back with it.
        if not uid or (count is not None and known.get(uid) == int(count) and uid not in gone):
            continue
        series_items = dw.call(
            source,
            "list the series of a study",
            client.search_for_series,
            study_instance_uid=uid,
            fields=dw.SERIES_FIELDS,
        )
        queued |= _record_study(source, item, series_items)
        result.studies_examined += 1
    # Only after the whole listing went through: a sync cut off half-way marks nothing gone.
    present = listed | gone
    result.studies_gone = _mark_gone(source, client, [uid for uid in known if uid not in present])
    queued |= set(series_ids_unfinished(source_id=source.id, idle_for=REQUEUE_AFTER))
    result.series_to_ingest = sorted(queued)
    return result


def _mark_gone(source: PacsSource, client, unlisted: list[str]) -> int:
    """Mark gone the studies the listing did not include, each once the PACS, asked for that very
    StudyInstanceUID, says it has no such study: a PACS that caps or pages its listings differently
    never makes studies look deleted. At most GONE_CHECKS_PER_SYNC asked per sync; the rest next time."""
    marked = 0
    for uid in unlisted[:GONE_CHECKS_PER_SYNC]:
        found = dw.call(
            source,
            "look up a study",
            client.search_for_studies,
            search_filters={"StudyInstanceUID": uid},
            fields=dw.STUDY_FIELDS,
        )
        if not found and study_mark_gone(source=source, study_instance_uid=uid) is not None:
            log.info("source %s: a study is no longer in the PACS; marked gone", source.id)
            marked += 1
    return marked


@transaction.atomic
def _record_study(source: PacsSource, item: dict, series_items: list[dict]) -> set[int]:
    """Upsert a study and its series; return the ids of series that need an ingest."""
    study = study_upsert(
        source=source,
        study_instance_uid=dw.value(item, dw.STUDY_UID),
        patient_id=str(dw.value(item, dw.PATIENT_ID, "")),
        study_date=_date(dw.value(item, dw.STUDY_DATE)),
        description=str(dw.value(item, dw.STUDY_DESCRIPTION, "")),
        modalities="\\".join(dw.values(item, dw.MODALITIES_IN_STUDY)),
        num_series=int(dw.value(item, dw.STUDY_NUM_SERIES, len(series_items))),
    )
    total = 0
    queued = set()
    series_mark_gone(study=study, listed_series_uids={dw.value(s, dw.SERIES_UID) for s in series_items})
    for s in series_items:
        modality = str(dw.value(s, dw.MODALITY, ""))
        count = int(dw.value(s, dw.SERIES_NUM_INSTANCES, 0))
        total += count
        number = dw.value(s, dw.SERIES_NUMBER)
        series, needs_ingest = series_upsert(
            study=study,
            series_instance_uid=dw.value(s, dw.SERIES_UID),
            modality=modality,
            description=str(dw.value(s, dw.SERIES_DESCRIPTION, "")),
            series_number=int(number) if number is not None else None,
            num_instances=count,
            skip_reason=(
                f"{modality} series hold no image to annotate; not built into a volume."
                if modality in NON_IMAGE_MODALITIES
                else ""
            ),
        )
        if needs_ingest:
            queued.add(series.id)
    study_mark_examined(study=study, num_instances=int(dw.value(item, dw.STUDY_NUM_INSTANCES, total)))
    return queued


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if text else None
    except ValueError:
        return None


def _lease_acquire(source_id: int) -> PacsSource:
    now = timezone.now()
    taken = (
        PacsSource.objects.filter(pk=source_id)
        .filter(Q(sync_lease_until__isnull=True) | Q(sync_lease_until__lt=now))
        .update(
            sync_lease_until=now + SYNC_LEASE,
            sync_status=PacsSource.SyncStatus.RUNNING,
            last_sync_started_at=now,
        )
    )
    source = PacsSource.objects.get(pk=source_id)
    if not taken:
        raise SyncAlreadyRunning(
            f"A sync of '{source.name}' is already running (started {source.last_sync_started_at})."
        )
    return source


def _finish(source_id: int, *, error: str) -> None:
    now = timezone.now()
    fields = {"sync_lease_until": None, "last_sync_finished_at": now}
    if error:
        fields.update(sync_status=PacsSource.SyncStatus.ERROR, last_error=error, last_error_at=now)
    else:  # recovered: the last error no longer describes the source
        fields.update(
            sync_status=PacsSource.SyncStatus.OK, last_success_at=now, last_error="", last_error_at=None
        )
    PacsSource.objects.filter(pk=source_id).update(**fields)
