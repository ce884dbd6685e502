"""Ingest of one series: WADO-RS retrieve -> volumes with checked geometry -> media store -> rows.

Safe to run twice and to kill at any point: files are named by content, rows are replaced under a
row lock in one transaction, and a series left half-way is picked up again by the next sync.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from django.db import connections

from common.media import media_relative, volumes_dir
from ml_worker.io.dicom_series import SeriesError, SeriesErrorKind, volumes_from_datasets
from ml_worker.io.volume import Volume, save_volume
from pacs import dicomweb as dw
from pacs.dicomweb import PacsRequestError, PacsUnavailable
from studies.models import Series
from studies.services import VolumeRecord, series_ingest_start, series_mark_error, series_volumes_replace

log = logging.getLogger(__name__)


def series_ingest(*, series_id: int) -> Series | None:
    """Build the volumes of a series. Raises PacsUnavailable (to be retried); records every other error."""
    series = series_ingest_start(series_id=series_id)
    if series is None:
        return None
    study = series.study
    source = study.source
    client = dw.client_for(source)
    try:
        with dw.pacs_errors(source, "retrieve a series"):
            datasets = client.retrieve_series(
                study.study_instance_uid, series.series_instance_uid, media_types=dw.STORED_TRANSFER_SYNTAX
            )
    except PacsUnavailable as exc:
        series_mark_error(series_id=series_id, kind="pacs_unavailable", message=exc.message)
        raise
    except PacsRequestError as exc:
        series_mark_error(series_id=series_id, kind="pacs_refused", message=exc.message)
        return None
    except Exception as exc:  # the PACS sent bytes that do not parse as DICOM
        log.warning("series %s: undecodable retrieve: %s", series_id, type(exc).__name__)
        series_mark_error(
            series_id=series_id,
            kind=SeriesErrorKind.MALFORMED,
            message=f"The PACS returned data that is not valid DICOM ({type(exc).__name__}).",
        )
        return None

    try:
        volumes = volumes_from_datasets(datasets)
    except SeriesError as exc:
        series_mark_error(
            series_id=series_id,
            kind=exc.kind,
            message=exc.message,
            skipped=exc.kind == SeriesErrorKind.NOT_IMAGE,
        )
        return None
    records = [_store(volume) for volume in volumes]
    instances = len({ds.SOPInstanceUID for ds in datasets})
    return series_volumes_replace(series_id=series_id, volumes=records, num_instances=instances)


def series_ingest_many(
    *, series_ids: Sequence[int], processes: int | None = None, done: Callable[[], None] = lambda: None
) -> int:
    """Ingest several series in child processes, one per core by default (DICOM parsing holds the
    GIL, so threads would not help); returns how many hit a PACS outage. Every outcome is recorded
    on its series. Used where no Celery worker runs the fan-out (manage.py pacs_sync, benchmarks).
    """
    connections.close_all()  # forked children must open their own database connections
    context = multiprocessing.get_context("fork")
    outages = 0
    with ProcessPoolExecutor(max_workers=processes or os.cpu_count(), mp_context=context) as pool:
        for ok in pool.map(_ingest_in_child, series_ids, chunksize=2):
            outages += not ok
            done()
    return outages


def _ingest_in_child(series_id: int) -> bool:
    try:
        series_ingest(series_id=series_id)
        return True
    except PacsUnavailable:
        return False


def _store(volume: Volume) -> VolumeRecord:
    path, digest = save_volume(volume.array, volume.affine, volumes_dir())
    return VolumeRecord(
        path=media_relative(path),
        sha256=digest,
        shape=list(volume.shape),
        spacing=[round(s, 6) for s in volume.spacing],
        affine=np.asarray(volume.affine, dtype=float).round(6).tolist(),
        dtype=str(volume.array.dtype),
        nbytes=int(volume.array.nbytes),
        sop_instance_uids=list(volume.sop_instance_uids),
        frame_numbers=list(volume.frame_numbers),
        frame_of_reference_uid=volume.frame_of_reference_uid or "",
        warnings=list(volume.warnings),
        source_slices=list(volume.source_slices),
        spacing_range=list(volume.spacing_range) if volume.spacing_range else None,
    )
