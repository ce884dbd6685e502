"""DICOM SEG back to the PACS: a mask on a volume's grid -> highdicom SEG -> STOW-RS."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from common.exceptions import ApplicationError
from ml_worker.io.seg import SegmentSpec, mask_to_seg
from pacs import dicomweb as dw
from pacs.services.store import pacs_store_datasets
from studies.models import Volume


@dataclass(frozen=True)
class SegExport:
    series_instance_uid: str
    sop_instance_uid: str


def volume_seg_export(
    *,
    volume: Volume,
    mask: np.ndarray,
    segments: Sequence[SegmentSpec],
    series_description: str = "Segmentation",
    content_creator: str | None = None,
) -> SegExport:
    """Send ``mask`` (the volume's (columns, rows, slices) grid, integer labels) to the volume's PACS;
    a mask on a volume resampled at ingest goes back onto the acquired slices (nearest slice).

    The SEG's UIDs derive from the volume and the mask's bytes, so a retry stores the same object
    again instead of a second one. Raises ApplicationError for a mask that does not fit the volume.
    """
    if tuple(mask.shape) != tuple(volume.shape):
        raise ApplicationError(
            f"The mask is {tuple(mask.shape)} voxels but the volume is {tuple(volume.shape)}."
        )
    if any(f is not None for f in volume.frame_numbers):
        raise ApplicationError(
            "DICOM SEG export of volumes built from multi-frame images is not supported yet."
        )
    if volume.resampled:
        # Drawn on the regular grid: each acquired slice takes the mask of the grid slice nearest to it,
        # so the SEG lies on the instances the PACS holds.
        mask = np.ascontiguousarray(mask[:, :, volume.source_slices])
    series = volume.series
    study = series.study
    source = study.source
    sources = _source_images(volume)
    key = hashlib.sha256(volume.sha256.encode() + np.ascontiguousarray(mask).tobytes()).hexdigest()
    uids = SegExport(
        series_instance_uid=str(generate_uid(entropy_srcs=["annotator-seg-series", key])),
        sop_instance_uid=str(generate_uid(entropy_srcs=["annotator-seg-instance", key])),
    )
    try:
        seg = mask_to_seg(
            mask,
            source_images=sources,
            segments=segments,
            series_instance_uid=uids.series_instance_uid,
            sop_instance_uid=uids.sop_instance_uid,
            series_description=series_description,
            content_creator=content_creator,
        )
    except ValueError as exc:
        raise ApplicationError(str(exc)) from exc
    pacs_store_datasets(source=source, datasets=[seg])
    return uids


def _source_images(volume: Volume) -> list[Dataset]:
    """The volume's source instances as metadata (no pixels), in slice order, via WADO-RS metadata."""
    series = volume.series
    study = series.study
    client = dw.client_for(study.source)
    items = dw.call(
        study.source,
        "read the source series' metadata",
        client.retrieve_series_metadata,
        study.study_instance_uid,
        series.series_instance_uid,
    )
    by_uid = {}
    for item in items:
        # Bulk values (pixels, private blobs) stay in the PACS: a SEG needs only the headers.
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda tag, vr, uri: None)
        by_uid[str(ds.SOPInstanceUID)] = ds
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise ApplicationError(
            f"{len(missing)} source instances of this volume are no longer in the PACS; re-sync the series."
        )
    return [by_uid[uid] for uid in volume.sop_instance_uids]
