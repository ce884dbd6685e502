"""DICOM SEG writing and reading (highdicom) for label maps on a :class:`~ml_worker.io.volume.Volume` grid.

A label map here is an integer array ``(columns, rows, slices)`` whose slice ``k`` lies on source
instance ``k`` (the Volume's ``sop_instance_uids``); 0 is background.

Writing (:func:`mask_to_seg`) makes a BINARY Segmentation, one segment per :class:`SegmentSpec`
(segment numbers 1..n in the order given), frames referencing the source instances; empty frames are
left out (highdicom's default), except when the whole mask is empty (then every frame is written, as a
SEG needs at least one). highdicom needs only the source instances' metadata (patient/study/series
attributes, FrameOfReferenceUID, Rows, Columns, ImagePositionPatient, ImageOrientationPatient,
PixelSpacing, SliceThickness): WADO-RS metadata without PixelData is enough. The caller passes the
UIDs (derived deterministically), so a retried export yields the same object identity; highdicom stamps
InstanceCreation/Content date and time with the current clock, so the bytes differ between runs.

Reading (:func:`seg_to_mask`) accepts BINARY, FRACTIONAL and LABELMAP SEGs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

# SNOMED CT (value, scheme, meaning) triplets.
ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")
TISSUE = ("85756007", "SCT", "Tissue")

_FRACTIONAL_THRESHOLD = 0.5  # a FRACTIONAL value (rescaled to 0..1) at or above this counts as inside


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: the mask value ``label`` and how it is described in the SEG.

    ``category`` and ``type`` are coded (value, scheme designator, meaning) triplets, e.g. SNOMED CT
    ``("91723000", "SCT", "Anatomical Structure")``; ``rgb`` is the recommended display colour.
    """

    label: int
    name: str
    category: tuple[str, str, str] = ANATOMICAL_STRUCTURE
    type: tuple[str, str, str] = TISSUE
    rgb: tuple[int, int, int] | None = None


def _check_segments(segments: Sequence[SegmentSpec]) -> None:
    if len(segments) == 0:
        raise ValueError("at least one SegmentSpec is required")
    labels = [int(s.label) for s in segments]
    if any(label <= 0 for label in labels):
        raise ValueError(f"segment labels must be positive (0 is background), got {labels}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"segment labels must be unique, got {labels}")
    if len(segments) > 65535:
        raise ValueError("too many segments (at most 65535)")
    for spec in segments:
        if not spec.name or len(spec.name) > 64:
            raise ValueError(f"segment name must have 1 to 64 characters, got {spec.name!r}")


def _integer_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype.kind == "b":
        return mask.astype(np.uint8)
    if mask.dtype.kind in "ui":
        return mask
    if mask.dtype.kind == "f" and np.all(np.isfinite(mask)) and np.all(mask == np.round(mask)):
        return mask.astype(np.int64)
    raise ValueError(f"mask must hold integer labels, got dtype {mask.dtype}")


# Type 2 attributes (present, may be empty) that a SEG copies from its first source image; anonymised
# sources often lack them, and highdicom then fails on the missing attribute.
_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def _with_type2_attributes(source_images: Sequence[Dataset]) -> list[Dataset]:
    """The sources, the first one completed with empty values of the type 2 attributes it lacks (a
    copy: the caller's dataset is left as it was)."""
    first = source_images[0]
    missing = [keyword for keyword in _TYPE2_COPIED if keyword not in first]
    if not missing:
        return list(source_images)
    first = copy.deepcopy(first)
    for keyword in missing:
        setattr(first, keyword, "")
    return [first, *source_images[1:]]


def mask_to_seg(
    mask: np.ndarray,
    *,
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentSpec],
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 900,
    series_description: str = "Segmentation",
    manufacturer: str = "annotator",
    software_version: str = "0.1.0",
    content_creator: str | None = None,
) -> Dataset:
    """A BINARY DICOM SEG (a ``highdicom.seg.Segmentation``, i.e. a pydicom Dataset) of ``mask``.

    ``mask``: integer label map ``(columns, rows, slices)``; slice ``k`` is ``source_images[k]``
    (single-frame instances of one series, metadata alone is enough). Voxels equal to
    ``segments[i].label`` become segment number ``i + 1``.

    Raises ValueError when the shape is not ``(Columns, Rows, len(source_images))`` of the sources,
    when the mask holds values that no SegmentSpec names, or when the specs are invalid.
    """
    _check_segments(segments)
    if len(source_images) == 0:
        raise ValueError("source_images is empty")
    mask = _integer_mask(mask)
    first = source_images[0]
    expected = (int(first.Columns), int(first.Rows), len(source_images))
    if mask.shape != expected:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the source images: expected "
            f"(columns, rows, slices) = {expected}"
        )
    for index, image in enumerate(source_images):
        if (int(image.Columns), int(image.Rows)) != expected[:2]:
            raise ValueError(
                f"source image {index} is {image.Columns}x{image.Rows} (columns x rows), "
                f"the first is {expected[0]}x{expected[1]}"
            )
    values = {int(v) for v in np.unique(mask)}
    unknown = sorted(values - {0} - {int(s.label) for s in segments})
    if unknown:
        raise ValueError(
            f"mask holds label values with no SegmentSpec: {unknown} "
            f"(known: {sorted(int(s.label) for s in segments)})"
        )

    source_images = _with_type2_attributes(source_images)
    dtype = np.uint8 if len(segments) <= 255 else np.uint16
    numbered = np.zeros(mask.shape, dtype=dtype)
    for number, spec in enumerate(segments, start=1):
        numbered[mask == spec.label] = number
    # (columns, rows, slices) -> highdicom's (frames, rows, columns)
    pixel_array = np.ascontiguousarray(numbered.transpose(2, 1, 0))

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=Code(*spec.category),
            segmented_property_type=Code(*spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            display_color=hd.color.CIELabColor.from_rgb(*spec.rgb) if spec.rgb is not None else None,
        )
        for number, spec in enumerate(segments, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer,
        software_versions=software_version,
        device_serial_number="0",
        series_description=series_description,
        content_creator_name=content_creator,
        omit_empty_frames=bool(numbered.any()),
        # UTF-8 holds any text the sources and our names carry (highdicom rejects an empty value).
        specific_character_set="ISO_IR 192",
    )


def _check_spatial_locations(seg: Dataset) -> None:
    """Refuse SEGs whose frames declare that they are not pixel-aligned with their sources."""
    groups = list(seg.get("SharedFunctionalGroupsSequence", [])) + list(
        seg.get("PerFrameFunctionalGroupsSequence", [])
    )
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                preserved = source.get("SpatialLocationsPreserved")
                if preserved is not None and preserved != "YES":
                    raise ValueError(
                        f"the SEG says its frames are not pixel-aligned with the source images "
                        f"(SpatialLocationsPreserved = {preserved}); it cannot be read onto their grid"
                    )


def seg_to_mask(
    seg: Dataset,
    *,
    sop_instance_uids: Sequence[str],
    frame_numbers: Sequence[int | None] | None = None,
    shape: tuple[int, int, int],
) -> tuple[np.ndarray, dict[int, str]]:
    """Read a BINARY, FRACTIONAL or LABELMAP SEG onto a Volume grid.

    ``sop_instance_uids[k]`` (and ``frame_numbers[k]`` for multi-frame sources, else ``None``) is the
    source of slice ``k``; ``shape`` = (columns, rows, slices). Returns ``(label_map, names)``: a uint8
    (uint16 beyond 255 segments) array of ``shape`` whose value is the segment number (0 = none) and
    ``{segment number: SegmentLabel}``.

    - Overlapping segments: the later (higher) segment number wins.
    - FRACTIONAL: a pixel belongs to a segment when its value is >= 0.5 of MaximumFractionalValue.
    - LABELMAP: segment 0 (usually "Background") is treated as background and not returned.
    - Slices whose source the SEG has no frame for (sparse SEGs, omitted empty frames) stay 0.
    - Frames without SpatialLocationsPreserved are assumed aligned (dcmqi and others omit it); a SEG
      stating NO / REORIENTED_ONLY raises ValueError, as does one that references none of the sources
      or whose frames are not ``rows x columns``.
    """
    columns, rows, n_slices = (int(s) for s in shape)
    if len(sop_instance_uids) != n_slices:
        raise ValueError(f"{len(sop_instance_uids)} sop_instance_uids for {n_slices} slices")
    if frame_numbers is None:
        frame_numbers = [None] * n_slices
    if len(frame_numbers) != n_slices:
        raise ValueError(f"{len(frame_numbers)} frame_numbers for {n_slices} slices")
    if (int(seg.Columns), int(seg.Rows)) != (columns, rows):
        raise ValueError(
            f"SEG frames are {seg.Columns}x{seg.Rows} (columns x rows), the grid is {columns}x{rows}"
        )
    _check_spatial_locations(seg)
    segmentation = hd.seg.Segmentation.from_dataset(seg, copy=True)

    referenced = {str(uid) for _, _, uid in segmentation.get_source_image_uids()}
    if not referenced & {str(uid) for uid in sop_instance_uids}:
        raise ValueError("the SEG references none of the given source instances")

    numbers = [int(n) for n in segmentation.segment_numbers if int(n) != 0]
    names = {n: str(segmentation.get_segment_description(n).SegmentLabel) for n in numbers}
    dtype = np.uint8 if max(numbers, default=0) <= 255 else np.uint16
    out = np.zeros((n_slices, rows, columns), dtype=dtype)  # highdicom's (frames, rows, columns)
    if not numbers:
        return np.ascontiguousarray(out.transpose(2, 1, 0)), names
    fractional = segmentation.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL

    def read(slices: list[int], uid: str | None, frames: list[int] | None) -> None:
        common = dict(
            ignore_spatial_locations=True,  # checked above
            assert_missing_frames_are_empty=True,
        )
        if fractional:
            # Values in 0..1 cannot be combined by highdicom: one segment at a time, thresholded.
            for number in numbers:
                if frames is None:
                    stack = segmentation.get_pixels_by_source_instance(
                        [sop_instance_uids[k] for k in slices], segment_numbers=[number], **common
                    )
                else:
                    stack = segmentation.get_pixels_by_source_frame(
                        uid, source_frame_numbers=frames, segment_numbers=[number], **common
                    )
                part = out[slices]
                part[stack[..., 0] >= _FRACTIONAL_THRESHOLD] = number
                out[slices] = part
            return
        combined = dict(
            segment_numbers=numbers, combine_segments=True, relabel=False, skip_overlap_checks=True, **common
        )
        if frames is None:
            labels = segmentation.get_pixels_by_source_instance(
                [sop_instance_uids[k] for k in slices], **combined
            )
        else:
            labels = segmentation.get_pixels_by_source_frame(uid, source_frame_numbers=frames, **combined)
        out[slices] = labels

    single = [k for k in range(n_slices) if frame_numbers[k] is None]
    if single:
        read(single, None, None)
    by_instance: dict[str, list[int]] = {}
    for k in range(n_slices):
        if frame_numbers[k] is not None:
            by_instance.setdefault(str(sop_instance_uids[k]), []).append(k)
    for uid, slices in by_instance.items():
        read(slices, uid, [int(frame_numbers[k]) for k in slices])
    return np.ascontiguousarray(out.transpose(2, 1, 0)), names
