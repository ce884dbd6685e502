"""Label maps on the wire and in the media store.

Voxel order, everywhere a label map is flat: NIfTI order, ``i`` (column) fastest, then ``j`` (row),
then ``k`` (slice): ``flat = i + I * (j + J * k)`` for a volume of shape ``(I, J, K)``. It is the order
of the NIfTI file the image endpoint serves and of a NiiVue volume's ``img`` array, i.e.
``mask.ravel(order="F")`` for an array indexed ``[i, j, k]``.

What a client sends to save a version (JSON), one of:

- a full label map: ``{"labelmap": "<base64 of gzip of the I*J*K uint8 voxels, in that order>"}``;
- a delta against the parent version: ``{"delta": [[start, length, value], ...]}``: voxels
  ``start .. start + length - 1`` take ``value``; runs are sorted by ``start`` and do not overlap.

What the store keeps: a gzipped NIfTI-1 uint8 label map with the volume's affine, named
``masks/<sha256>.nii.gz`` by the SHA-256 of its uncompressed bytes (the same map is one file).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from django.conf import settings

from common.exceptions import ApplicationError
from common.media import media_path, media_relative
from ml_worker.io.volume import volume_to_nifti_bytes


def masks_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "masks"


def labelmap_decode(encoded: str, *, shape: Sequence[int]) -> np.ndarray:
    """base64(gzip(uint8 voxels in NIfTI order)) -> uint8 array ``shape``. Decompresses at most one
    byte beyond the volume's size, so a small upload cannot expand into a huge one."""
    expected = int(np.prod(shape))
    try:
        compressed = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApplicationError("The label map is not valid base64.") from exc
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        raw = inflater.decompress(compressed, expected + 1)
    except zlib.error as exc:
        raise ApplicationError("The label map is not gzip-compressed data.") from exc
    if len(raw) != expected or inflater.unconsumed_tail:
        size = f"{len(raw)}" if len(raw) <= expected else f"more than {expected}"
        raise ApplicationError(
            f"The label map has {size} voxels but the volume has {'x'.join(map(str, shape))} = {expected}."
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(tuple(shape), order="F")


def labelmap_encode(mask: np.ndarray) -> str:
    """The inverse of :func:`labelmap_decode` (for scripts and tests)."""
    return base64.b64encode(gzip.compress(np.asarray(mask, np.uint8).tobytes(order="F"))).decode()


def delta_parse(runs: Sequence[Sequence[int]], *, size: int) -> np.ndarray:
    """Check ``[[start, length, value], ...]`` against a map of ``size`` voxels; returns (n, 3) int64."""
    try:
        array = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ApplicationError("A delta is a list of [start, length, value] runs of integers.") from exc
    starts, lengths, values = array.T
    if len(array) and (starts.min() < 0 or lengths.min() < 1 or (starts + lengths).max() > size):
        raise ApplicationError(f"Delta runs must have length >= 1 and lie within the {size} voxels.")
    if len(array) and (values.min() < 0 or values.max() > 255):
        raise ApplicationError("Delta values must be label values between 0 and 255.")
    if np.any(starts[1:] < starts[:-1] + lengths[:-1]):
        raise ApplicationError("Delta runs must be sorted by start and must not overlap.")
    return array


def delta_apply(base: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """A new map: ``base`` with ``runs`` (from :func:`delta_parse`) written over it."""
    flat = np.asarray(base, np.uint8).ravel(order="F").copy()
    if len(runs):
        starts, lengths, values = runs.T
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat[np.repeat(starts, lengths) + offsets] = np.repeat(values, lengths).astype(np.uint8)
    return flat.reshape(base.shape, order="F")


def mask_write(mask: np.ndarray, *, affine: np.ndarray) -> tuple[str, str]:
    """Store ``mask`` (uint8) as ``masks/<sha256>.nii.gz``; returns (path relative to MEDIA_ROOT, sha256).

    Idempotent, and atomic: a temporary file is renamed into place, so no partial file has the final name.
    """
    data = volume_to_nifti_bytes(np.asarray(mask, np.uint8), np.asarray(affine, np.float64))
    digest = hashlib.sha256(data).hexdigest()
    directory = masks_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.nii.gz"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(gzip.compress(data, compresslevel=6, mtime=0))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return media_relative(path), digest


def mask_read(relative: str) -> np.ndarray:
    return np.asarray(nib.load(str(media_path(relative))).dataobj, dtype=np.uint8)


def volume_gzip_path(relative: str) -> Path:
    """A gzipped copy of a stored volume (``<name>.nii.gz`` beside it), made on first use."""
    source = media_path(relative)
    target = source.with_name(source.name + ".gz")
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=source.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
                    while chunk := src.read(1 << 20):
                        gz.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target
