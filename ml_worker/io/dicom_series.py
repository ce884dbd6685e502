"""Turn the DICOM instances of one series into :class:`~ml_worker.io.volume.Volume` objects.

The result follows the convention of :mod:`ml_worker.io.volume`: ``array[i, j, k]`` =
``[column, row, slice]``, slices ascending along the slice normal ``n = row_dir x col_dir``, and an
affine (voxel -> RAS mm) whose third column is the actual step between consecutive
ImagePositionPatient values (sheared for a gantry-tilted stack). Nothing is resampled.

A series that cannot become volumes raises :class:`SeriesError`, whose ``kind`` says why and whose
``message`` says exactly what is wrong (slice positions, InstanceNumbers, attribute values) without
any patient-identifying text. A series whose slice spacing genuinely changes is split into runs of
uniform spacing, one :class:`Volume` each, with a warning on each, and is also offered as one
volume resampled onto a regular grid along the slice normal (flagged, the exception to "nothing is
resampled"; see :func:`_regularised_volume`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from ml_worker.io.volume import LPS_TO_RAS, Volume

__all__ = ["SeriesError", "SeriesErrorKind", "dataset_from_bytes", "volumes_from_datasets"]


class SeriesErrorKind(StrEnum):
    """Why a series could not be turned into volumes."""

    MALFORMED = "malformed"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    NOT_IMAGE = "not_image"
    MIXED = "mixed"
    DUPLICATE = "duplicate"
    MISSING_SLICE = "missing_slice"
    GEOMETRY = "geometry"


class SeriesError(Exception):
    """A series (or one of its files) that cannot become a volume.

    kind: what class of problem it is; message: a human-readable statement of exactly what is wrong
    (which slice positions, InstanceNumbers, attribute values), never patient-identifying text.
    """

    def __init__(self, kind: SeriesErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message


# --- tolerances -------------------------------------------------------------------------------
_ORIENTATION_ATOL = 1e-4  # IOP direction cosines that differ by less are the same orientation
_PIXEL_SPACING_ATOL = 1e-4  # mm
_UNIT_TOL = 1e-2  # |direction cosine vector| must be 1 within this
_ORTHOGONAL_TOL = 1e-3  # |row . col| above this is not orthogonal
_SAME_POSITION_MM = 1e-2  # slices closer than this along the normal are at the same position
# Steps are uniform within max(_STEP_ATOL_MM, _STEP_RTOL * step). Scanners write positions to
# 0.01 mm or so; a step is the difference of two, so it may be off by 0.02 mm on thin slices.
_STEP_ATOL_MM = 0.025
_STEP_RTOL = 0.01
_MULTIPLE_RTOL = 0.05  # a gap is within 5 % of the regular step of an integer multiple >= 2
_TILT_MIN_DEG = 0.05  # shear below this is numerical noise, not worth a warning

# SOP classes that carry no image to segment (SEG, SR, RT objects, registrations, documents, ...).
_NOT_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.6": "Tractography Results",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
}
_NOT_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report / Key Object Selection",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
    "1.2.840.10008.5.1.4.1.1.481.": "Radiotherapy object",
}
_NOT_IMAGE_MODALITIES = {"SEG", "SR", "KO", "PR", "DOC", "REG", "FID", "RWV", "PLAN"} | {
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "RTRECORD",
    "RTIMAGE",
}
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# --- reading one file ----------------------------------------------------------------------------
def dataset_from_bytes(data: bytes) -> Dataset:
    """Parse the bytes of one DICOM Part 10 file (preamble + ``DICM`` + file meta) without ``force``.

    The returned dataset is complete: a file cut short anywhere (inside an element, inside the
    pixel data, or inside the header of the next element) raises ``SeriesError(MALFORMED)``, as do
    bytes that are not DICOM at all. Pixel data is checked for length, not decoded.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types (EOFError, IndexError, struct.error, ...)
        raise SeriesError(SeriesErrorKind.MALFORMED, f"not a readable DICOM file ({_short(exc)})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise SeriesError(SeriesErrorKind.MALFORMED, "the file meta header has no TransferSyntaxUID")
    if len(ds) == 0:
        raise SeriesError(SeriesErrorKind.MALFORMED, "the file holds a file meta header but no data set")
    _check_last_element_complete(ds, len(data))
    _check_pixel_data_length(ds)
    return ds


def _check_last_element_complete(ds: Dataset, n_bytes: int) -> None:
    """pydicom reads a cut-off value short, and drops a cut-off element header, without complaint."""
    last = ds.get_item(list(ds.keys())[-1])
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF or last.value is None:
        return  # sequences and encapsulated pixel data: a cut inside them fails in dcmread itself
    if len(last.value) != last.length:
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"the file is truncated: element {last.tag} declares {last.length} bytes "
            f"but only {len(last.value)} are present",
        )
    trailing = n_bytes - (last.value_tell + last.length)
    if trailing > 0:
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"the file is truncated: {trailing} bytes after element {last.tag} are not a complete element",
        )


def _check_pixel_data_length(ds: Dataset) -> None:
    if "PixelData" not in ds:
        return
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        if syntax.is_encapsulated:
            if not any(True for _ in generate_fragments(ds.PixelData)):
                raise ValueError("no fragments")
            return
        expected = get_expected_length(ds)
    except SeriesError:
        raise
    except Exception as exc:
        raise SeriesError(
            SeriesErrorKind.MALFORMED, f"the pixel data or its description is invalid ({_short(exc)})"
        ) from exc
    actual = len(ds.PixelData)
    if actual < expected:
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"the pixel data is truncated: {actual} bytes where Rows x Columns x frames needs {expected}",
        )


# --- one slice of the series ----------------------------------------------------------------------
@dataclass
class _Slice:
    dataset: Dataset
    frame_index: int | None  # 0-based frame of a multi-frame instance, None for a single-frame one
    sop_instance_uid: str
    instance_number: int | None
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient as stored
    pixel_spacing: np.ndarray  # (2,) row spacing, column spacing (mm)
    spacing_between: float | None  # SpacingBetweenSlices (mm)
    thickness: float | None  # SliceThickness (mm)
    rescale: Dataset  # holds the modality LUT / rescale that applies to this slice
    distance: float = 0.0  # position along the slice normal (mm), set once the normal is known

    @property
    def label(self) -> str:
        """'instance 12 [SOP Instance UID 1.2.3]': the InstanceNumber people see in a viewer and the
        UID that finds the object in the PACS (numbers repeat and may be absent; UIDs do not)."""
        number = "?" if self.instance_number is None else str(self.instance_number)
        frame = "" if self.frame_index is None else f" frame {self.frame_index + 1}"
        return f"instance {number}{frame} [SOP Instance UID {self.sop_instance_uid}]"


def _instance_label(ds: Dataset) -> str:
    number = ds.get("InstanceNumber")
    uid = str(ds.get("SOPInstanceUID") or "?")
    return f"instance {number if number not in (None, '') else '?'} [SOP Instance UID {uid}]"


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _floats(value: Any, count: int, keyword: str, where: str) -> np.ndarray:
    if value is None or value == "":
        raise SeriesError(SeriesErrorKind.GEOMETRY, f"{where} has no {keyword}")
    try:
        values = np.array([float(v) for v in (value if isinstance(value, Sequence) else [value])])
    except (TypeError, ValueError) as exc:
        raise SeriesError(SeriesErrorKind.GEOMETRY, f"{where} has a non-numeric {keyword}") from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise SeriesError(
            SeriesErrorKind.GEOMETRY, f"{where} has {keyword} {list(values)}; expected {count} finite numbers"
        )
    return values


def _optional_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` for frame ``index``: per-frame group first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        items = per_frame[index].get(sequence)
        if items:
            return items[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items = shared[0].get(sequence)
        if items:
            return items[0]
    return None


def _slices_of(ds: Dataset) -> list[_Slice]:
    """Every slice one instance contributes: one for a classic image, one per frame for an enhanced one."""
    uid = str(ds.SOPInstanceUID)
    number = ds.get("InstanceNumber")
    number = int(number) if number not in (None, "") else None
    where = _instance_label(ds)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not enhanced:
        if n_frames > 1:
            raise SeriesError(
                SeriesErrorKind.GEOMETRY,
                f"{where} has {n_frames} frames but no per-frame plane positions "
                "(no functional groups), so its frames cannot be placed in space",
            )
        return [
            _Slice(
                dataset=ds,
                frame_index=None,
                sop_instance_uid=uid,
                instance_number=number,
                position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),
                orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where),
                pixel_spacing=_floats(ds.get("PixelSpacing"), 2, "PixelSpacing", where),
                spacing_between=_optional_float(ds.get("SpacingBetweenSlices")),
                thickness=_optional_float(ds.get("SliceThickness")),
                rescale=ds,
            )
        ]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n_frames:
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"{where} has NumberOfFrames {n_frames} but {len(per_frame)} per-frame functional groups",
        )
    slices = []
    for index in range(n_frames):
        frame_where = f"{where} frame {index + 1}"
        position = _functional_group(ds, index, "PlanePositionSequence")
        orientation = _functional_group(ds, index, "PlaneOrientationSequence")
        measures = _functional_group(ds, index, "PixelMeasuresSequence")
        transform = _functional_group(ds, index, "PixelValueTransformationSequence")
        rescale = Dataset()
        if transform is not None and "RescaleSlope" in transform and "RescaleIntercept" in transform:
            rescale.RescaleSlope = transform.RescaleSlope
            rescale.RescaleIntercept = transform.RescaleIntercept
        slices.append(
            _Slice(
                dataset=ds,
                frame_index=index,
                sop_instance_uid=uid,
                instance_number=number,
                position=_floats(
                    position and position.get("ImagePositionPatient"), 3, "ImagePositionPatient", frame_where
                ),
                orientation=_floats(
                    orientation and orientation.get("ImageOrientationPatient"),
                    6,
                    "ImageOrientationPatient",
                    frame_where,
                ),
                pixel_spacing=_floats(
                    measures and measures.get("PixelSpacing"), 2, "PixelSpacing", frame_where
                ),
                spacing_between=_optional_float(measures and measures.get("SpacingBetweenSlices")),
                thickness=_optional_float(measures and measures.get("SliceThickness")),
                rescale=rescale,
            )
        )
    return slices


# --- series-level checks ------------------------------------------------------------------------
def _deduplicate(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Drop repeated deliveries of the same object (same SOPInstanceUID, same pixel data)."""
    seen: dict[str, Dataset] = {}
    for ds in datasets:
        uid = ds.get("SOPInstanceUID")
        if not uid:
            raise SeriesError(SeriesErrorKind.MALFORMED, f"{_instance_label(ds)} has no SOPInstanceUID")
        uid = str(uid)
        first = seen.get(uid)
        if first is None:
            seen[uid] = ds
        elif _pixel_bytes(first) != _pixel_bytes(ds):
            raise SeriesError(
                SeriesErrorKind.DUPLICATE,
                f"two different objects share one SOPInstanceUID ({_instance_label(first)} and "
                f"{_instance_label(ds)}): their pixel data differ",
            )
    return list(seen.values())


def _pixel_bytes(ds: Dataset) -> bytes | None:
    for keyword in _PIXEL_DATA_KEYWORDS:
        if keyword in ds:
            return ds[keyword].value
    return None


def _not_image_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not a greyscale image we can segment (naming its SOP class), or None."""
    sop_class = str(ds.get("SOPClassUID") or "")
    modality = str(ds.get("Modality") or "")
    known = _NOT_IMAGE_SOP_CLASSES.get(sop_class) or next(
        (label for prefix, label in _NOT_IMAGE_SOP_PREFIXES.items() if sop_class.startswith(prefix)), None
    )
    sop_name = UID(sop_class).name if sop_class else "no SOPClassUID"
    if sop_name == sop_class and known:
        sop_name = known  # a class pydicom has no name for
    described = f"{sop_name} ({sop_class or '-'}, Modality {modality or '-'})"
    if known or modality in _NOT_IMAGE_MODALITIES:
        return f"{described} is not an image to segment"
    if all(keyword not in ds for keyword in _PIXEL_DATA_KEYWORDS):
        return f"{described} has no pixel data"
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation") or "")
    if samples != 1 or photometric.startswith(("RGB", "YBR", "PALETTE")):
        return f"colour images ({photometric or 'RGB'}) are not supported for segmentation"
    return None


def _check_images(datasets: Sequence[Dataset]) -> None:
    reasons: dict[str, int] = {}
    for ds in datasets:
        reason = _not_image_reason(ds)
        if reason is None:
            continue
        sop_name = UID(str(ds.get("SOPClassUID", ""))).name
        if all(keyword not in ds for keyword in _PIXEL_DATA_KEYWORDS) and "Image Storage" in sop_name:
            raise SeriesError(
                SeriesErrorKind.MALFORMED,
                f"{_instance_label(ds)} is an image ({sop_name}) without pixel data (incomplete file)",
            )
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        raise SeriesError(
            SeriesErrorKind.NOT_IMAGE,
            "; ".join(
                f"{count} instance{'s' if count > 1 else ''}: {reason}" for reason, count in reasons.items()
            ),
        )


def _check_transfer_syntaxes(datasets: Sequence[Dataset]) -> None:
    for ds in datasets:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is None:
            raise SeriesError(SeriesErrorKind.MALFORMED, f"{_instance_label(ds)} has no TransferSyntaxUID")
        syntax = UID(syntax)
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise SeriesError(
                SeriesErrorKind.UNSUPPORTED_TRANSFER_SYNTAX,
                f"pixel data is encoded as {syntax.name} ({syntax}), which no installed decoder can read",
            )


def _describe_groups(
    values: Sequence[Any],
    labels: Sequence[str],
    same: Callable[[Any, Any], bool],
    show: Callable[[Any], str] = str,
) -> list[str]:
    """Cluster ``values`` with ``same``; one 'N with value (labels)' per cluster, none if all agree."""
    groups: list[tuple[Any, list[str]]] = []
    for value, label in zip(values, labels, strict=True):
        for representative, members in groups:
            if same(representative, value):
                members.append(label)
                break
        else:
            groups.append((value, [label]))
    if len(groups) == 1:
        return []
    groups.sort(key=lambda group: -len(group[1]))
    out = []
    for value, members in groups:
        members.sort(key=lambda label: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label)])
        shown = ", ".join(members[:6]) + (", ..." if len(members) > 6 else "")
        out.append(f"{len(members)} with {show(value)} ({shown})")
    return out


def _format_numbers(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _numbered(uids: Sequence[str], what: str) -> list[str]:
    """UIDs are long and say nothing to a reader: name the distinct values #1, #2, ..."""
    index = {uid: i + 1 for i, uid in enumerate(dict.fromkeys(uids))}
    return [f"{what} #{index[uid]}" if uid else f"no {what}" for uid in uids]


def _check_consistent(datasets: Sequence[Dataset], slices: Sequence[_Slice]) -> None:
    """MIXED when instances disagree on series, frame of reference, matrix size, orientation or spacing."""
    labels = [_instance_label(ds) for ds in datasets]
    slice_labels = [s.label for s in slices]

    def equal(a: Any, b: Any) -> bool:
        return a == b

    def close(atol: float) -> Callable[[Any, Any], bool]:
        return lambda a, b: bool(np.allclose(a, b, rtol=0, atol=atol))

    checks = [
        (
            "SeriesInstanceUID",
            _describe_groups(
                _numbered([str(ds.get("SeriesInstanceUID") or "") for ds in datasets], "SeriesInstanceUID"),
                labels,
                equal,
            ),
        ),
        (
            "FrameOfReferenceUID",
            _describe_groups(
                _numbered(
                    [str(ds.get("FrameOfReferenceUID") or "") for ds in datasets], "FrameOfReferenceUID"
                ),
                labels,
                equal,
            ),
        ),
        (
            "Rows/Columns",
            _describe_groups([f"{ds.get('Rows')}x{ds.get('Columns')}" for ds in datasets], labels, equal),
        ),
        (
            "ImageOrientationPatient",
            _describe_groups(
                [s.orientation for s in slices], slice_labels, close(_ORIENTATION_ATOL), _format_numbers
            ),
        ),
        (
            "PixelSpacing",
            _describe_groups(
                [s.pixel_spacing for s in slices], slice_labels, close(_PIXEL_SPACING_ATOL), _format_numbers
            ),
        ),
    ]
    problems = [f"{name}: {'; '.join(groups)}" for name, groups in checks if groups]
    if problems:
        raise SeriesError(
            SeriesErrorKind.MIXED, "instances of the series disagree on " + " | ".join(problems)
        )


def _plane_axes(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row direction, column direction and slice normal (LPS) from ImageOrientationPatient."""
    row, col = orientation[:3], orientation[3:]
    row_norm, col_norm = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(row_norm - 1) > _UNIT_TOL or abs(col_norm - 1) > _UNIT_TOL:
        raise SeriesError(
            SeriesErrorKind.GEOMETRY,
            f"ImageOrientationPatient {_format_numbers(orientation)} does not hold unit vectors "
            f"(lengths {row_norm:.4g} and {col_norm:.4g})",
        )
    row, col = row / row_norm, col / col_norm
    if abs(float(row @ col)) > _ORTHOGONAL_TOL:
        raise SeriesError(
            SeriesErrorKind.GEOMETRY,
            f"ImageOrientationPatient {_format_numbers(orientation)} is not orthogonal "
            f"(row . column = {float(row @ col):.4g})",
        )
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


# --- slice spacing: uniform, missing slices, or runs ------------------------------------------
def _uniform_reach(steps: np.ndarray, scalar: np.ndarray) -> list[int]:
    """For each slice ``a``, the last slice ``b`` such that slices ``a..b`` are uniformly spaced.

    steps: ``(K-1, 3)`` step vectors between consecutive sorted slices; scalar: ``(K-1,)`` their
    components along the normal. Slices ``a..b`` are uniform when their step vectors agree
    component-wise within max(0.025 mm, 1 % of the smallest step). A sub-run of a uniform run is
    uniform, so the reach never moves back and each slice is visited a bounded number of times.
    """

    def uniform(first: int, last: int) -> bool:
        window = steps[first:last]
        tolerance = max(_STEP_ATOL_MM, _STEP_RTOL * float(scalar[first:last].min()))
        return float(np.ptp(window, axis=0).max()) <= tolerance

    count = len(scalar) + 1
    reach = []
    last = 0
    for first in range(count):
        last = max(last, first)
        while last + 1 < count and uniform(first, last + 1):
            last += 1
        reach.append(last)
    return reach


def _uniform_runs(reach: Sequence[int]) -> list[tuple[int, int]]:
    """Split slices ``0..K-1`` into the fewest uniform runs ``(a, b)`` (inclusive), longest runs on a tie."""
    count = len(reach)
    best: list[tuple[int, int] | None] = [None] * (count + 1)
    previous = [0] * (count + 1)
    best[0] = (0, 0)
    for first in range(count):
        runs, score = best[first] or (0, 0)
        for last in range(first, reach[first] + 1):
            cost = (runs + 1, score - (last - first + 1) ** 2)  # fewest runs, then longest runs
            current = best[last + 1]
            if current is None or cost < current:
                best[last + 1] = cost
                previous[last + 1] = first
    result = []
    end = count
    while end > 0:
        result.append((previous[end], end - 1))
        end = previous[end]
    return result[::-1]


def _missing_slices(
    slices: Sequence[_Slice], steps: np.ndarray, scalar: np.ndarray, reach: Sequence[int]
) -> list[str]:
    """Describe each isolated step that is an integer multiple (>= 2) of the regular step beside it.

    Steps are grouped greedily into maximal runs of equal steps; a step alone in its group whose
    neighbouring group (a run of >= 2 equal steps, where the series has any) has step ``r`` is a gap
    when it lies within 5 % of ``r`` of ``k * r`` for an integer ``k >= 2``: ``k - 1`` slices missing.
    """
    groups = []  # (first step, last step), inclusive
    step = 0
    while step < len(scalar):
        groups.append((step, reach[step] - 1))
        step = reach[step]
    any_long = any(last > first for first, last in groups)
    gaps = []
    for index, (first, last) in enumerate(groups):
        if first != last:
            continue
        neighbours = [groups[i] for i in (index - 1, index + 1) if 0 <= i < len(groups)]
        if any_long:
            neighbours = [(a, b) for a, b in neighbours if b > a]
        for a, b in neighbours:
            regular = steps[a : b + 1].mean(axis=0)
            regular_scalar = float(scalar[a : b + 1].mean())
            multiple = round(float(scalar[first]) / regular_scalar)
            off = float(np.linalg.norm(steps[first] - multiple * regular))
            if multiple >= 2 and off <= _MULTIPLE_RTOL * float(np.linalg.norm(regular)):
                before, after = slices[first], slices[first + 1]
                missing = multiple - 1
                gaps.append(
                    f"{missing} slice{'s' if missing > 1 else ''} missing between {before.distance:.3f} mm "
                    f"({before.label}) and {after.distance:.3f} mm ({after.label}): a step of "
                    f"{float(scalar[first]):.3f} mm where the regular step is {regular_scalar:.3f} mm"
                )
                break
    return gaps


def _distinct_steps(scalar: np.ndarray, runs: Sequence[tuple[int, int]]) -> str:
    """'steps of 4.000, 1.080, 7.000 mm': the runs' steps and the steps between runs, in order."""
    values: list[float] = []
    for index, (a, b) in enumerate(runs):
        if index > 0:
            values.append(float(scalar[a - 1]))
        if b > a:
            values.append(float(scalar[a:b].mean()))
    collapsed = [v for i, v in enumerate(values) if i == 0 or abs(v - values[i - 1]) > 1e-3]
    shown = ", ".join(f"{v:.3f}" for v in collapsed[:8]) + (", ..." if len(collapsed) > 8 else "")
    return f"steps of {shown} mm"


def _check_same_positions(slices: Sequence[_Slice]) -> None:
    """DUPLICATE when different slices sit at one position along the normal (slices sorted)."""
    problems = []
    start = 0
    while start < len(slices):
        end = start
        while end + 1 < len(slices) and slices[end + 1].distance - slices[start].distance < _SAME_POSITION_MM:
            end += 1
        if end > start:
            group = slices[start : end + 1]
            labels = [s.label for s in group]
            shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
            problems.append(
                f"{len(group)} slices at {group[0].distance:.3f} mm along the slice normal: {shown}"
            )
        start = end + 1
    if problems:
        more = f" (and {len(problems) - 5} more positions)" if len(problems) > 5 else ""
        raise SeriesError(
            SeriesErrorKind.DUPLICATE,
            "different instances share a slice position (echoes, time points or repeats?): "
            + "; ".join(problems[:5])
            + more,
        )


def _describe_run(run: Sequence[_Slice]) -> str:
    if all(s.frame_index is None for s in run):
        numbers = [s.instance_number for s in run]
        if all(n is not None for n in numbers):
            ints = [int(n) for n in numbers if n is not None]
            if len(ints) > 1 and all(abs(b - a) == 1 for a, b in zip(ints, ints[1:], strict=False)):
                return f"instances {ints[0]}-{ints[-1]}"
            return "instance" + ("s " if len(ints) > 1 else " ") + ", ".join(str(n) for n in ints)
    if len({s.sop_instance_uid for s in run}) == 1 and run[0].frame_index is not None:
        frames = [s.frame_index + 1 for s in run if s.frame_index is not None]
        return f"frames {', '.join(str(f) for f in frames)} of {_instance_label(run[0].dataset)}"
    return f"the slices at {run[0].distance:.3f}..{run[-1].distance:.3f} mm"


# --- building one volume ------------------------------------------------------------------------
def _decode(slice_: _Slice) -> np.ndarray:
    """Stored values ``(rows, columns)`` of one slice."""
    ds = slice_.dataset
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        array, _ = get_decoder(syntax).as_array(ds, index=slice_.frame_index)
    except Exception as exc:
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"the pixel data of {slice_.label} could not be decoded ({syntax.name}, {syntax}): {_short(exc)}",
        ) from exc
    rows, columns = int(ds.Rows), int(ds.Columns)
    if array.shape != (rows, columns):
        raise SeriesError(
            SeriesErrorKind.MALFORMED,
            f"the pixel data of {slice_.label} decodes to shape {array.shape}, not ({rows}, {columns})",
        )
    return array


def _rescale(array: np.ndarray, rescale: Dataset) -> np.ndarray:
    """The modality LUT; integer slope and intercept (CT's 1 and -1024) stay in integers, exactly."""
    slope, intercept = rescale.get("RescaleSlope"), rescale.get("RescaleIntercept")
    if "ModalityLUTSequence" not in rescale:
        slope, intercept = float(1 if slope is None else slope), float(0 if intercept is None else intercept)
        if slope.is_integer() and intercept.is_integer():
            if (slope, intercept) == (1.0, 0.0):
                return array
            return array.astype(np.int64) * int(slope) + int(intercept)
    return apply_modality_lut(array, rescale)


def _output_dtype(low: float, high: float, integral: bool) -> np.dtype:
    if integral:
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


def _build_volume(
    run: Sequence[_Slice], row: np.ndarray, col: np.ndarray, normal: np.ndarray, warnings: list[str]
) -> Volume:
    """One volume from slices sorted along the normal; the affine's third column is their mean step."""
    first = run[0]
    if len(run) > 1:
        step = (run[-1].position - first.position) / (len(run) - 1)
    else:
        thickness = first.spacing_between or first.thickness
        if thickness is None:
            thickness = 1.0
            warnings.append(
                "single slice without SpacingBetweenSlices or SliceThickness: slice step set to 1 mm"
            )
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row * first.pixel_spacing[1]  # i runs along a row, columns are PixelSpacing[1] apart
    lps[:3, 1] = col * first.pixel_spacing[0]  # j runs down a column, rows are PixelSpacing[0] apart
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = LPS_TO_RAS @ lps

    rescaled = []
    low, high, integral = math.inf, -math.inf, True
    for slice_ in run:  # decode and rescale, and find the range of the values
        values = _rescale(_decode(slice_), slice_.rescale)
        rescaled.append(values)
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        if values.dtype.kind == "f":
            integral = integral and bool(
                np.all(np.isfinite(values)) and np.array_equal(values, np.rint(values))
            )
    dtype = _output_dtype(low, high, integral)
    rows, columns = rescaled[0].shape
    out = np.empty((columns, rows, len(run)), dtype=dtype, order="F")
    for k, values in enumerate(rescaled):
        out[:, :, k] = values.T
    return Volume(
        array=out,
        affine=affine,
        sop_instance_uids=tuple(s.sop_instance_uid for s in run),
        frame_numbers=tuple(None if s.frame_index is None else s.frame_index + 1 for s in run),
        frame_of_reference_uid=str(first.dataset.get("FrameOfReferenceUID") or "") or None,
        warnings=tuple(warnings),
    )


def _tilt_warning(step: np.ndarray, normal: np.ndarray, header_tilt: Any) -> str | None:
    along = float(step @ normal)
    across = float(np.linalg.norm(step - along * normal))
    angle = math.degrees(math.atan2(across, abs(along)))
    if angle < _TILT_MIN_DEG:
        return None
    try:
        header = (
            f"; GantryDetectorTilt in the header is {float(header_tilt):g} deg (vendors differ in its sign)"
        )
    except (TypeError, ValueError):
        header = ""
    return (
        f"gantry tilt: slice positions are sheared {angle:.2f} deg from the slice normal{header}; "
        "the affine holds the shear and voxels were not resampled"
    )


# --- one regular grid for a series of uneven spacing -----------------------------------------------
def _regularised_volume(
    slices: Sequence[_Slice], slabs: Sequence[Volume], scalar: np.ndarray, common: list[str]
) -> tuple[Volume | None, str]:
    """The whole series on a regular grid along the slice normal, as 3D Slicer's acquisition geometry
    regularization does: as many slices as were acquired, evenly spaced from the first to the last,
    each interpolated linearly between the two acquired slices around it. The slice planes stay
    parallel to the acquired ones; a gantry tilt's shear is kept in the affine. Returns (None, why)
    when the slice origins do not lie on one line (a tilt that changes within the series): then
    in-plane resampling would be needed, and the exact slabs are all there is.
    """
    count = len(slices)
    along = np.array([s.distance for s in slices]) - slices[0].distance
    positions = np.array([s.position for s in slices])
    per_mm = (positions[-1] - positions[0]) / along[-1]  # origin shift per mm along the normal
    off_line = float(np.linalg.norm(positions - positions[0] - np.outer(along, per_mm), axis=1).max())
    tolerance = 0.05 * float(slices[0].pixel_spacing.min())  # a twentieth of a pixel
    if off_line > tolerance:
        return None, (
            f"not resampled onto a regular grid: the slice origins leave the line through the first and "
            f"last by up to {off_line:.3f} mm (the tilt changes along the series)"
        )
    step = along[-1] / (count - 1)
    targets = np.arange(count) * step
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, count - 1)
    lower = upper - 1
    weight = np.clip((targets - along[lower]) / (along[upper] - along[lower]), 0.0, 1.0)
    acquired = [slab.array[:, :, k] for slab in slabs for k in range(slab.shape[2])]
    integral = all(slab.array.dtype.kind in "iu" for slab in slabs)
    dtype = np.result_type(*(slab.array.dtype for slab in slabs)) if integral else np.dtype(np.float32)
    out = np.empty(slabs[0].shape[:2] + (count,), dtype=dtype, order="F")
    for k in range(count):
        a, b, w = acquired[lower[k]], acquired[upper[k]], float(weight[k])
        value = (1.0 - w) * a.astype(np.float32) + w * b.astype(np.float32)
        out[:, :, k] = np.rint(value) if integral else value
    affine = slabs[0].affine.copy()
    affine[:3, 2] = LPS_TO_RAS[:3, :3] @ (per_mm * step)
    low, high = float(scalar.min()), float(scalar.max())
    nearest = tuple(int(k) for k in np.clip(np.rint(along / step), 0, count - 1))
    warning = (
        f"resampled: the acquired slices are {low:.3f} to {high:.3f} mm apart along the slice normal, "
        f"so this volume puts them on a regular grid of {count} slices {step:.3f} mm apart (linear "
        "interpolation between neighbouring slices, as 3D Slicer's acquisition geometry regularization); "
        "the exact slabs are kept as the series' other volumes, and masks go back to the PACS on the "
        "acquired slices"
    )
    tilt = [
        w.replace("the affine holds the shear and voxels were not resampled", "the affine holds the shear")
        for w in slabs[0].warnings
        if w.startswith("gantry tilt")
    ]
    return (
        Volume(
            array=out,
            affine=affine,
            sop_instance_uids=tuple(s.sop_instance_uid for s in slices),
            frame_numbers=tuple(None if s.frame_index is None else s.frame_index + 1 for s in slices),
            frame_of_reference_uid=slabs[0].frame_of_reference_uid,
            warnings=tuple(common + tilt + [warning]),
            source_slices=nearest,
            spacing_range=(round(low, 6), round(high, 6)),
        ),
        "",
    )


def volumes_from_datasets(datasets: Sequence[pydicom.Dataset]) -> list[Volume]:
    """Turn the instances of one series into volumes on their source grid, without resampling.

    datasets: the instances in any order (single-frame images, or enhanced multi-frame images
    placed by their functional groups); the same SOPInstanceUID delivered twice counts once.

    Returns one :class:`Volume` (``array`` ``(columns, rows, slices)``, slices ascending along the
    normal, modality LUT applied, int16/uint16/int32 when the values are integers in range else
    float32). When the slice spacing changes within the series: first the whole series resampled onto
    a regular grid along the normal (flagged: ``source_slices``, ``spacing_range``, a warning), then
    one exact volume per run of uniform spacing (each with a warning saying so). Raises
    :class:`SeriesError` for anything else; its message names each slice by InstanceNumber and SOP
    Instance UID.
    """
    if not datasets:
        raise SeriesError(SeriesErrorKind.NOT_IMAGE, "the series holds no instances")
    unique = _deduplicate(datasets)
    _check_images(unique)
    _check_transfer_syntaxes(unique)
    slices: list[_Slice] = []
    for ds in unique:
        try:
            slices.extend(_slices_of(ds))
        except SeriesError:
            raise
        except Exception as exc:  # a header value pydicom cannot convert
            raise SeriesError(
                SeriesErrorKind.MALFORMED,
                f"the header of {_instance_label(ds)} is unreadable ({_short(exc)})",
            ) from exc
    _check_consistent(unique, slices)
    row, col, normal = _plane_axes(slices[0].orientation)

    for slice_ in slices:
        slice_.distance = float(slice_.position @ normal)
    slices.sort(key=lambda s: s.distance)
    _check_same_positions(slices)

    common: list[str] = []
    photometric = {str(ds.get("PhotometricInterpretation", "")) for ds in unique}
    if "MONOCHROME1" in photometric:
        common.append("MONOCHROME1: low values display bright; stored values were kept, not inverted")
    header_tilt = unique[0].get("GantryDetectorTilt")

    if len(slices) == 1:
        return [_build_volume(slices, row, col, normal, common)]
    positions = np.array([s.position for s in slices])
    steps = np.diff(positions, axis=0)
    scalar = np.array([s.distance for s in slices[1:]]) - np.array([s.distance for s in slices[:-1]])
    reach = _uniform_reach(steps, scalar)
    runs = [(0, len(slices) - 1)] if reach[0] == len(slices) - 1 else _uniform_runs(reach)
    if len(runs) > 1:
        gaps = _missing_slices(slices, steps, scalar, reach)
        if gaps:
            raise SeriesError(SeriesErrorKind.MISSING_SLICE, "; ".join(gaps))

    volumes = []
    distinct_steps = _distinct_steps(scalar, runs)
    for number, (a, b) in enumerate(runs, start=1):
        run = slices[a : b + 1]
        warnings = list(common)
        if len(run) > 1:
            tilt = _tilt_warning((run[-1].position - run[0].position) / (len(run) - 1), normal, header_tilt)
            if tilt:
                warnings.append(tilt)
        if len(runs) > 1:
            spacing = f"{float(scalar[a:b].mean()):.3f} mm apart" if b > a else "a single slice"
            warnings.append(
                f"slice spacing changes along the series ({distinct_steps}), so it was split into "
                f"{len(runs)} volumes of uniform spacing; volume {number} of {len(runs)} holds "
                f"{_describe_run(run)} ({len(run)} slice{'s' if len(run) > 1 else ''}, {spacing})"
            )
        volumes.append(_build_volume(run, row, col, normal, warnings))
    if len(runs) == 1:
        return volumes
    regular, why_not = _regularised_volume(slices, volumes, scalar, common)
    if regular is None:
        return [replace(v, warnings=v.warnings + (why_not,)) if why_not else v for v in volumes]
    return [regular, *volumes]
