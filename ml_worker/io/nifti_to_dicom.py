"""Write a NIfTI image (or any array on a :mod:`ml_worker.io.volume` grid) as a single-frame DICOM MR series.

Used to put demo/research data (e.g. the MSD hippocampus crops) into a PACS, so that the platform can
ingest it like any other study and export DICOM SEG against it.

Geometry (the :class:`~ml_worker.io.volume.Volume` convention: ``array[i, j, k]`` = [column, row,
slice], ``affine`` voxel -> RAS mm; DICOM is LPS):

- slice ``k`` is one instance; ``ImagePositionPatient`` = LPS of ``affine @ (0, 0, k, 1)``,
- ``ImageOrientationPatient`` = the normalised LPS directions of affine columns 0 (along a row, i.e.
  increasing column index) and 1 (down a column),
- ``PixelSpacing`` = [|column 1|, |column 0|] (DICOM order: distance between rows first),
- ``SliceThickness`` = ``SpacingBetweenSlices`` = |column 2|,
- ``pixel_array`` of slice ``k`` = ``array[:, :, k].T`` (Rows = ``shape[1]``, Columns = ``shape[0]``).

Slices are written in ``k`` order (InstanceNumber ``k + 1``). A reader that sorts along the slice
normal (``row x column`` direction) gets the same order back only when the affine's third column
points along that normal (det > 0 in LPS, true for the hippocampus data); otherwise it reverses them.

Pixel values (one scaling for the whole series, so windows are the same on every slice):

- integers whose range fits 16 bits are stored exactly as uint16 with RescaleSlope 1 and
  RescaleIntercept 0 (or ``min`` when the values are negative or above 65535 but span < 65536);
- anything else (floats, wide integer ranges) is scaled to the full uint16 range:
  ``stored = round((value - intercept) / slope)``, ``intercept = min``, ``slope = (max - min) / 65535``,
  so ``stored * slope + intercept`` (what ``pydicom.pixels.apply_modality_lut`` returns) is within half a
  quantisation step (``slope / 2``) of the input, plus the float32 rounding of the input itself. The slope
  and intercept are rounded to their DICOM DS text first, and the pixels quantised with those exact values.

Identity is deterministic: every UID is derived from the caller's ``key`` (same key -> same Study,
Series, Frame of Reference and SOP Instance UIDs), dates and times are fixed, and nothing reads the clock,
so converting the same input twice gives byte-identical files and re-loading a PACS adds nothing new.
The key must therefore change when the content changes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from ml_worker.io.volume import LPS_TO_RAS

_UINT16_MAX = 65535
# In-plane axes further from perpendicular than this cannot be written as an ImageOrientationPatient.
_ORTHOGONALITY_TOL = 1e-4
_MANUFACTURER = "annotator"
_SOFTWARE_VERSION = "nifti_to_dicom 1"


def deterministic_uid(key: str, role: str) -> str:
    """A UID under pydicom's root derived from ``key`` and ``role`` (e.g. "study", "instance/3").

    The two strings are JSON-encoded together so different (key, role) splits never collide.
    """
    return str(generate_uid(entropy_srcs=[json.dumps(["annotator.nifti_to_dicom", key, role])]))


def _ds(value: float) -> str:
    """A float as DICOM DS text (at most 16 characters, as precise as that allows; no -0)."""
    value = float(value)
    if abs(value) < 1e-12:
        value = 0.0
    return format_number_as_ds(value)


def _geometry(affine: np.ndarray) -> tuple[list[str], list[str], str, np.ndarray, np.ndarray]:
    """(ImageOrientationPatient, PixelSpacing, slice spacing) as DS text; LPS origin and slice step."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    lps = LPS_TO_RAS @ affine  # the diagonal flip is its own inverse: RAS -> LPS
    col0, col1, col2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    len0, len1, len2 = (float(np.linalg.norm(c)) for c in (col0, col1, col2))
    if min(len0, len1, len2) <= 0:
        raise ValueError("affine has a zero-length voxel axis")
    row_dir, col_dir = col0 / len0, col1 / len1
    if abs(float(row_dir @ col_dir)) > _ORTHOGONALITY_TOL:
        raise ValueError("affine columns 0 and 1 are not perpendicular; DICOM cannot hold an in-plane shear")
    if abs(float(np.cross(row_dir, col_dir) @ (col2 / len2))) < 1e-6:
        raise ValueError("affine column 2 lies in the slice plane")
    iop = [_ds(v) for v in (*row_dir, *col_dir)]
    pixel_spacing = [_ds(len1), _ds(len0)]
    return iop, pixel_spacing, _ds(len2), lps[:3, 3], col2


def _quantise(array: np.ndarray) -> tuple[np.ndarray, str, str]:
    """(uint16 array, RescaleSlope text, RescaleIntercept text); see the module docstring."""
    if array.size == 0:
        raise ValueError("array is empty")
    values = np.asarray(array)
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if values.dtype.kind not in "uif":
        raise ValueError(f"unsupported dtype {values.dtype}")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ValueError("array holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    is_integer = values.dtype.kind in "ui" or bool(np.all(values == np.round(values)))
    if is_integer and lo >= 0 and hi <= _UINT16_MAX:
        return values.astype(np.uint16), "1", "0"
    if is_integer and hi - lo <= _UINT16_MAX and abs(lo) < 1e15:
        intercept = _ds(lo)
        stored = (values.astype(np.float64) - float(intercept)).round()
        return stored.astype(np.uint16), "1", intercept
    intercept = _ds(lo)
    slope = _ds((hi - float(intercept)) / _UINT16_MAX) if hi > lo else "1"
    # Rounding the slope to 16 characters may push max a hair above 65535: clip.
    stored = ((values.astype(np.float64) - float(intercept)) / float(slope)).round()
    return np.clip(stored, 0, _UINT16_MAX).astype(np.uint16), slope, intercept


def array_to_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    key: str,
    patient_id: str,
    patient_name: str,
    study_description: str,
    series_description: str,
    study_date: str = "20200101",
    series_number: int = 1,
) -> list[Dataset]:
    """One MR Image Storage dataset per slice ``k`` of ``array`` (columns, rows, slices) on ``affine``.

    Each dataset carries file meta (Explicit VR Little Endian, uncompressed) and uncompressed uint16
    pixels; see the module docstring for geometry, scaling and UIDs.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (columns, rows, slices), got shape {array.shape}")
    if len(study_date) != 8 or not study_date.isdigit():
        raise ValueError(f"study_date must be YYYYMMDD, got {study_date!r}")
    iop, pixel_spacing, slice_spacing, origin, step = _geometry(affine)
    stored, slope, intercept = _quantise(array)
    columns, rows, n_slices = array.shape

    study_uid = deterministic_uid(key, "study")
    series_uid = deterministic_uid(key, "series")
    frame_of_reference_uid = deterministic_uid(key, "frame-of-reference")
    low = float(stored.min()) * float(slope) + float(intercept)
    high = float(stored.max()) * float(slope) + float(intercept)

    datasets = []
    for k in range(n_slices):
        sop_uid = deterministic_uid(key, f"instance/{k}")
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

        # SOP Common
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = study_date
        ds.InstanceCreationTime = "000000"
        # Patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = study_date
        ds.StudyTime = "000000"
        ds.ReferringPhysicianName = ""
        ds.StudyID = ""
        ds.AccessionNumber = ""
        ds.StudyDescription = study_description
        # General Series
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDate = study_date
        ds.SeriesTime = "000000"
        ds.SeriesDescription = series_description
        ds.PatientPosition = "HFS"
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = _MANUFACTURER
        ds.SoftwareVersions = _SOFTWARE_VERSION
        # General Image
        ds.InstanceNumber = k + 1
        ds.ContentDate = study_date
        ds.ContentTime = "000000"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = "Converted from NIfTI"
        ds.BurnedInAnnotation = "NO"
        # Image Plane
        position = origin + k * step
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = slice_spacing
        ds.SpacingBetweenSlices = slice_spacing
        # MR Image (Type 1 with neutral values, Type 2 empty: the acquisition is unknown)
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "US"
        ds.WindowCenter = _ds((low + high) / 2)
        ds.WindowWidth = _ds(max(high - low, 1.0))
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
        datasets.append(ds)
    return datasets


def nifti_to_dicom_series(
    nifti_path: Path,
    *,
    key: str,
    patient_id: str,
    patient_name: str,
    study_description: str,
    series_description: str,
    study_date: str = "20200101",
    series_number: int = 1,
) -> list[Dataset]:
    """Read a 3D NIfTI file (nibabel's affine: sform, else qform) and convert it with
    :func:`array_to_dicom_series`. A 4D file with one volume is accepted."""
    image = nib.load(str(nifti_path))
    array = np.asarray(image.dataobj)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    return array_to_dicom_series(
        array,
        np.asarray(image.affine, dtype=np.float64),
        key=key,
        patient_id=patient_id,
        patient_name=patient_name,
        study_description=study_description,
        series_description=series_description,
        study_date=study_date,
        series_number=series_number,
    )


def series_to_bytes(datasets: Sequence[Dataset]) -> list[bytes]:
    """Each dataset as a DICOM Part-10 file (preamble, file meta, Explicit VR Little Endian)."""
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out
