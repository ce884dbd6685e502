"""STOW-RS: send DICOM objects to a PACS source."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset
from pydicom.dataset import validate_file_meta

from common.exceptions import ApplicationError
from pacs import dicomweb as dw
from pacs.models import PacsSource

# Keep each request well under typical proxy/PACS body limits.
STOW_BATCH_BYTES = 64 * 1024 * 1024


class PacsStoreRejected(ApplicationError):
    pass


def pacs_store_datasets(*, source: PacsSource, datasets: Sequence[Dataset]) -> int:
    """Store ``datasets`` (one study per call) in batches; returns how many the PACS accepted.

    Sending an object the PACS already holds is harmless (same SOPInstanceUID, no duplicate).
    Raises PacsStoreRejected naming the refused instances' reasons, PacsUnavailable when it is down.
    """
    client = dw.client_for(source)
    stored = 0
    for batch in _batches([_part10(ds) for ds in datasets]):
        response = dw.call(source, "store DICOM objects", client.store_instances, datasets=batch)
        failed = response.get("FailedSOPSequence", []) if response is not None else []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsStoreRejected(
                f"PACS '{source.name}' refused {len(failed)} of {len(batch)} objects "
                f"(DICOM failure reasons {', '.join(reasons)})."
            )
        stored += len(batch)
    return stored


def _part10(ds: Dataset) -> Dataset:
    """A dataset made in memory has no preamble; dicomweb-client would send it (and the PACS keep it)
    without one, and DICOM readers then refuse the file. Complete it as a Part-10 file."""
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\0" * 128
    ds.ensure_file_meta()
    validate_file_meta(ds.file_meta, enforce_standard=True)
    return ds


def _batches(datasets: Sequence[Dataset]):
    batch, size = [], 0
    for ds in datasets:
        n = len(ds.PixelData) if "PixelData" in ds else 0
        if batch and size + n > STOW_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(ds)
        size += n
    if batch:
        yield batch
