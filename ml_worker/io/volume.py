"""The canonical volume: the one in-memory and on-disk form that crosses from ingest to the models.

Convention (the NIfTI one, so NiiVue, nibabel and MONAI read it as is):
- ``array`` is indexed ``[i, j, k]`` = ``[column, row, slice]`` of the source DICOM grid, slices
  in ascending order along the slice normal. Voxels are not resampled at ingest, so a mask drawn
  on this array maps one-to-one onto the source instances (what DICOM SEG export needs). The one
  exception is flagged: a series of uneven slice spacing also gets a volume resampled along the slice
  normal onto a regular grid (``source_slices`` maps its slices back onto the source instances).
- ``affine`` maps ``(i, j, k, 1)`` to RAS millimetres. Its third column is the step between slice
  positions, which is not perpendicular to the slice plane for a gantry-tilted CT: the affine is
  then sheared, and still exact.
- On disk: uncompressed NIfTI-1 (sform = affine), named by the SHA-256 of its bytes, so writing the
  same volume twice gives the same file and a half-written file never carries a final name.
  Uncompressed because gzip would cost more than retrieving the series from the PACS, and workers
  can memory-map it; what streams to a browser is compressed on the way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

# DICOM patient coordinates are LPS; NIfTI world coordinates are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D image on its source grid.

    array: ``(I, J, K)`` = (columns, rows, slices), integer or float32.
    affine: ``(4, 4)`` float64, voxel index -> RAS mm.
    sop_instance_uids: the source instance of each slice ``k`` (length ``K``); for a volume
        resampled at ingest, the source instances in slice order (as many as its slices).
    frame_numbers: 1-based frame of that instance for multi-frame sources, else ``None`` per slice.
    source_slices: empty for a volume on its source grid; for one resampled onto a regular grid
        (a series of uneven slice spacing), the slice of this volume nearest to each source instance
        (same order as ``sop_instance_uids``): a mask drawn on it maps back onto the source instances.
    spacing_range: for a resampled volume, the smallest and largest step between the acquired slices
        along the slice normal (mm).
    """

    array: np.ndarray
    affine: np.ndarray
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int | None, ...] = ()
    frame_of_reference_uid: str | None = None
    warnings: tuple[str, ...] = field(default=())
    source_slices: tuple[int, ...] = ()
    spacing_range: tuple[float, float] | None = None

    @property
    def resampled(self) -> bool:
        return bool(self.source_slices)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Length of each voxel axis in mm (the slice axis is the step between slice positions)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)


def volume_to_nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """NIfTI-1 bytes with sform = qform code 'scanner'; the same input gives the same bytes."""
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    # qform cannot hold a shear; the sform is exact and is what readers use first.
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image.to_bytes()


def save_volume(array: np.ndarray, affine: np.ndarray, directory: Path) -> tuple[Path, str]:
    """Write ``array``/``affine`` into ``directory`` as ``<sha256>.nii``; return (path, sha256).

    Idempotent: an existing file of the same content is kept. The write goes to a temporary file
    in the same folder and is renamed into place, so a crash leaves no partial final file.
    """
    data = volume_to_nifti_bytes(array, affine)
    digest = hashlib.sha256(data).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.nii"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path, digest


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along i, j, k of a volume with this affine."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0))


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file written by :func:`save_volume` (or any NIfTI); return (array, affine)."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)
