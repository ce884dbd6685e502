"""Tests for ml_worker.io.dicom_series on the real shared DICOM data and on objects derived from it."""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)

from ml_worker.io.dicom_series import SeriesError, SeriesErrorKind, dataset_from_bytes, volumes_from_datasets
from ml_worker.io.volume import LPS_TO_RAS, Volume

T1POST = "dicom/PGBM-003/11-T1post-18670"
T1PRE = "dicom/PGBM-003/26401-T1prereg-52906"
FLAIR = "dicom/PGBM-003/36468-FLAIRreg-58706"
HIPPO = "dicom/PGBM-003/11_HCropVolume"
PHILIPS = "dicom-edge/philips-tilt"
GE = "dicom-edge/ge-tilt-variable-spacing"
CT3 = "dicom-seg/ct-3slice/image"
PHANTOM = "dicom-seg/phantom-23x38x3/image"
LIVER_SEG = "dicom-seg/ct-3slice/seg/liver.dcm"
LABELMAP_SEG = "dicom-seg/phantom-24x38x3/seg/sparse-labelmap-noppv.dcm"

Files = dict[str, bytes]  # file name -> bytes of one series folder


@pytest.fixture(scope="session")
def series(shared_data: Path) -> Callable[[str], Files]:
    """Bytes of every file in a series folder (read once per session)."""

    @cache
    def read(folder: str) -> Files:
        return {p.name: p.read_bytes() for p in sorted((shared_data / folder).iterdir()) if p.is_file()}

    return read


def parse(files: Files | list[bytes]) -> list[Dataset]:
    return [dataset_from_bytes(b) for b in (files.values() if isinstance(files, dict) else files)]


def numbered(datasets: list[Dataset], instance_number: int) -> Dataset:
    return next(ds for ds in datasets if ds.InstanceNumber == instance_number)


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ras(lps_point) -> np.ndarray:
    return (LPS_TO_RAS @ np.r_[np.asarray(lps_point, dtype=float), 1.0])[:3]


def slice_distance(ds: Dataset) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return float(np.asarray(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))


def assert_exact(volume: Volume, datasets: list[Dataset]) -> None:
    """The volume reproduces every source slice: placement (affine) and values (modality LUT applied)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    sources = [by_uid[uid] for uid in volume.sop_instance_uids]
    iop = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in sources[0].PixelSpacing)
    np.testing.assert_allclose(volume.affine[:3, 0], LPS_TO_RAS[:3, :3] @ iop[:3] * column_spacing, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 1], LPS_TO_RAS[:3, :3] @ iop[3:] * row_spacing, atol=1e-6)
    np.testing.assert_array_equal(volume.affine[3], [0, 0, 0, 1])
    distances = [slice_distance(ds) for ds in sources]
    assert distances == sorted(distances)
    assert volume.frame_numbers == (None,) * len(sources)
    assert volume.frame_of_reference_uid == sources[0].FrameOfReferenceUID
    for k, ds in enumerate(sources):
        np.testing.assert_allclose(
            volume.affine @ [0, 0, k, 1], [*ras(ds.ImagePositionPatient), 1], atol=1e-3
        )
        expected = apply_modality_lut(ds.pixel_array, ds).T
        np.testing.assert_array_equal(volume.array[:, :, k], expected)


# --- real series that must build ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("folder", "shape", "spacing", "dtype"),
    [
        (T1POST, (280, 320, 22), (0.6875, 0.6875, 6.5), np.int16),
        (HIPPO, (34, 50, 40), (1.0, 1.0, 1.0), np.int16),
        (PHILIPS, (512, 512, 6), (0.482421875, 0.482421875, 2.5), np.int16),  # step is 2.5 in z, sheared
        (CT3, (512, 512, 3), (0.810547, 0.810547, 1.0), np.int16),  # SliceThickness 1.25 is not the step
        (PHANTOM, (23, 38, 3), (0.7, 0.7, 2.5), np.int16),
    ],
)
def test_series_becomes_one_exact_volume(series, folder, shape, spacing, dtype):
    datasets = parse(series(folder))
    (volume,) = volumes_from_datasets(datasets)
    assert volume.shape == shape
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-4)
    assert volume.array.dtype == dtype
    assert len(volume.sop_instance_uids) == shape[2]
    assert_exact(volume, datasets)


def test_slices_are_sorted_along_the_normal_not_by_instance_number(series):
    # ct-3slice: InstanceNumber 1, 2, 3 run down in z, so ascending along the normal (+z) is 3, 2, 1.
    datasets = parse(series(CT3))
    (volume,) = volumes_from_datasets(datasets)
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in datasets}
    assert [numbers[uid] for uid in volume.sop_instance_uids] == [3, 2, 1]


def test_rescale_is_applied_per_slice(series):
    files = series(PHILIPS)
    datasets = parse(files)
    datasets[2].RescaleSlope, datasets[2].RescaleIntercept = 2, -2000  # slope/intercept may vary per slice
    (volume,) = volumes_from_datasets(datasets)
    assert volume.array.dtype == np.int16
    k = volume.sop_instance_uids.index(datasets[2].SOPInstanceUID)
    np.testing.assert_array_equal(volume.array[:, :, k], (datasets[2].pixel_array.astype(int) * 2 - 2000).T)
    assert_exact(volume, datasets)


def test_gantry_tilt_keeps_the_sheared_step_and_warns(series):
    (volume,) = volumes_from_datasets(parse(series(PHILIPS)))
    step = volume.affine[:3, 2]
    normal = np.cross(volume.affine[:3, 0], volume.affine[:3, 1])
    angle = np.degrees(np.arccos(abs(step @ normal) / np.linalg.norm(step) / np.linalg.norm(normal)))
    assert angle == pytest.approx(18.5, abs=0.05)
    (warning,) = volume.warnings
    assert "gantry tilt" in warning and "18.50 deg" in warning and "-18.5" in warning


def test_variable_spacing_is_split_into_exact_runs(series):
    datasets = parse(series(GE))
    regular, *volumes = volumes_from_datasets(datasets)
    assert regular.resampled and not any(v.resampled for v in volumes)
    assert [v.shape for v in volumes] == [(512, 512, 5), (512, 512, 5)]
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in datasets}
    assert [[numbers[u] for u in v.sop_instance_uids] for v in volumes] == [
        [10, 11, 12, 13, 14],
        [15, 16, 17, 18, 19],
    ]
    for volume, along_normal, instances in zip(volumes, (4.0, 7.0), ("10-14", "15-19"), strict=True):
        normal = np.cross(volume.affine[:3, 0], volume.affine[:3, 1])
        normal /= np.linalg.norm(normal)
        assert volume.affine[:3, 2] @ normal == pytest.approx(along_normal, abs=0.01)
        assert_exact(volume, datasets)
        split = [w for w in volume.warnings if "split" in w]
        assert len(split) == 1 and f"instances {instances}" in split[0]
        assert "4.002" in split[0] and "6.999" in split[0]
        assert any("gantry tilt" in w for w in volume.warnings)


def test_uneven_spacing_is_also_offered_resampled_onto_a_regular_grid_along_the_normal(series):
    """3D Slicer's acquisition geometry regularization on the real GE head CT (18.5 deg tilt, steps of
    4.0, 1.08 and 7.0 mm): as many slices, evenly spaced from the first to the last, parallel to the
    acquired ones (the shear kept in the affine), each interpolated between its two neighbours."""
    datasets = parse(series(GE))
    regular, first, second = volumes_from_datasets(datasets)
    assert regular.shape == (512, 512, 10) and regular.array.dtype == first.array.dtype
    assert regular.spacing_range == pytest.approx((1.081, 6.999), abs=1e-3)
    (flag,) = [w for w in regular.warnings if w.startswith("resampled")]
    assert "1.081 to 6.999 mm apart" in flag and "10 slices 5.009 mm apart" in flag and "3D Slicer" in flag
    assert any(w.startswith("gantry tilt") and "not resampled" not in w for w in regular.warnings)
    normal = np.cross(regular.affine[:3, 0], regular.affine[:3, 1])
    normal /= np.linalg.norm(normal)
    step = regular.affine[:3, 2]
    assert step @ normal == pytest.approx(45.08 / 9, abs=0.01)  # regular along the normal
    np.testing.assert_allclose(step / (step @ normal), first.affine[:3, 2] / (first.affine[:3, 2] @ normal))
    np.testing.assert_allclose(regular.affine[:, 3], first.affine[:, 3])  # starts at the first slice
    np.testing.assert_allclose(regular.affine @ [0, 0, 9, 1], second.affine @ [0, 0, 4, 1], atol=1e-3)
    # end slices are the acquired ones; inner ones lie between their neighbours, linearly
    np.testing.assert_array_equal(regular.array[:, :, 0], first.array[:, :, 0])
    np.testing.assert_array_equal(regular.array[:, :, 9], second.array[:, :, 4])
    acquired = np.concatenate([first.array, second.array], axis=2).astype(np.float64)
    along = np.array([0, 4, 8, 12, 16, 17.08, 24.08, 31.08, 38.08, 45.08])  # from the headers, about
    k = 4  # 20.04 mm: between the slices at 17.08 and 24.08 mm
    w = (k * 45.08 / 9 - along[5]) / (along[6] - along[5])
    expected = (1 - w) * acquired[:, :, 5] + w * acquired[:, :, 6]
    assert np.abs(regular.array[:, :, k] - expected).max() <= 0.05 * np.abs(acquired).max()
    # its slices map back onto the acquired instances (SEG export): the nearest grid slice of each
    assert regular.sop_instance_uids == first.sop_instance_uids + second.sop_instance_uids
    assert regular.source_slices == (0, 1, 2, 2, 3, 3, 5, 6, 8, 9)


def test_a_tilt_that_changes_along_the_series_keeps_only_the_exact_slabs(series):
    datasets = parse(series(GE))
    last = numbered(datasets, 19)
    x, y, z = (float(v) for v in last.ImagePositionPatient)
    last.ImagePositionPatient = [x + 3.0, y, z]  # in-plane: off the line the other origins lie on
    volumes = volumes_from_datasets(datasets)
    assert not any(v.resampled for v in volumes)
    assert all(any("not resampled onto a regular grid" in w for w in v.warnings) for v in volumes)


def test_errors_name_each_slice_by_instance_number_and_sop_instance_uid(series):
    datasets = parse(series(HIPPO))
    gone = numbered(datasets, 20)
    datasets.remove(gone)
    before, after = numbered(datasets, 19), numbered(datasets, 21)
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets(datasets)
    assert f"instance 19 [SOP Instance UID {before.SOPInstanceUID}]" in caught.value.message
    assert f"instance 21 [SOP Instance UID {after.SOPInstanceUID}]" in caught.value.message


def test_a_lone_slice_between_two_spacings_becomes_its_own_volume(series):
    z = {**{n: float(n) for n in range(1, 11)}, 11: 11.7, 12: 14.5, 13: 17.0, 14: 19.5}
    datasets = [ds for ds in parse(series(HIPPO)) if ds.InstanceNumber in z]
    for ds in datasets:
        ds.ImagePositionPatient = [0, 0, z[ds.InstanceNumber]]
    regular, *volumes = volumes_from_datasets(datasets)
    assert regular.resampled and regular.shape[2] == 14
    assert [v.shape[2] for v in volumes] == [10, 1, 3]
    np.testing.assert_allclose([v.affine[2, 2] for v in volumes], [1.0, 1.0, 2.5])  # lone: SliceThickness
    for volume in volumes:
        assert_exact(volume, datasets)
    assert "volume 2 of 3 holds instance 11 (1 slice" in volumes[1].warnings[0]
    assert "instances 12-14 (3 slices, 2.500 mm apart)" in volumes[2].warnings[0]


def test_same_object_delivered_twice_counts_once(series):
    files = series(HIPPO)
    (volume,) = volumes_from_datasets(parse([*files.values(), files["20.dcm"], files["7.dcm"]]))
    assert volume.shape == (34, 50, 40)


@pytest.mark.parametrize(
    ("thickness", "spacing_between", "expected_step", "warns"),
    [(1.0, None, 1.0, False), (2.0, 3.0, 3.0, False), (None, None, 1.0, True)],
)
def test_one_instance_is_a_one_slice_volume(series, thickness, spacing_between, expected_step, warns):
    (ds,) = parse([series(HIPPO)["20.dcm"]])
    for keyword, value in (("SliceThickness", thickness), ("SpacingBetweenSlices", spacing_between)):
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    (volume,) = volumes_from_datasets([ds])
    assert volume.shape == (34, 50, 1)
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, expected_step])
    assert any("1 mm" in w for w in volume.warnings) is warns
    np.testing.assert_array_equal(volume.array[:, :, 0], ds.pixel_array.T)


def test_monochrome1_keeps_values_and_warns(series):
    datasets = parse(series(HIPPO))
    for ds in datasets:
        ds.PhotometricInterpretation = "MONOCHROME1"
    (volume,) = volumes_from_datasets(datasets)
    assert any("MONOCHROME1" in w for w in volume.warnings)
    assert (volume.array.min(), volume.array.max()) == (2, 194)


# --- synthetic enhanced multi-frame ---------------------------------------------------------------
def enhanced_ct(
    stored: np.ndarray,
    distances: list[float],
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    per_frame_rescale: dict[int, tuple[float, float]] | None = None,
) -> bytes:
    """An Enhanced CT file: ``stored`` (frames, rows, columns), frame f placed at distances[f] along n."""
    frames, rows, columns = stored.shape
    iop = [1.0, 0.0, 0.0, 0.0, 0.8, -0.6]  # oblique; normal (LPS) = (0, 0.6, 0.8)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([-20.0, 10.0, 30.0])

    def item(**values) -> Dataset:
        ds = Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        return ds

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2.1")  # Enhanced CT Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.Modality, ds.InstanceNumber = "CT", 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    ds.SharedFunctionalGroupsSequence = [
        item(
            PlaneOrientationSequence=[item(ImageOrientationPatient=iop)],
            PixelMeasuresSequence=[item(PixelSpacing=[0.5, 0.75], SliceThickness=2.5)],
            PixelValueTransformationSequence=[
                item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")
            ],
        )
    ]
    per_frame = []
    for f, distance in enumerate(distances):
        group = item(PlanePositionSequence=[item(ImagePositionPatient=list(origin + distance * normal))])
        if per_frame_rescale and f in per_frame_rescale:
            s, i = per_frame_rescale[f]
            group.PixelValueTransformationSequence = [
                item(RescaleSlope=s, RescaleIntercept=i, RescaleType="HU")
            ]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = stored.tobytes()
    return to_bytes(ds)


def test_enhanced_multiframe_is_placed_by_its_functional_groups():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 3000, size=(4, 6, 5), dtype=np.uint16)  # frames, rows, columns
    distances = [5.0, 0.0, 7.5, 2.5]  # stored out of order: sorted frames are 2, 4, 1, 3
    ds = dataset_from_bytes(
        enhanced_ct(stored, distances, slope=1, intercept=-1024, per_frame_rescale={2: (2, -100)})
    )
    (volume,) = volumes_from_datasets([ds])
    assert volume.shape == (5, 6, 4)
    assert volume.frame_numbers == (2, 4, 1, 3)
    assert volume.sop_instance_uids == (ds.SOPInstanceUID,) * 4
    assert volume.frame_of_reference_uid == ds.FrameOfReferenceUID
    np.testing.assert_allclose(volume.spacing, (0.75, 0.5, 2.5))
    for k, frame in enumerate(volume.frame_numbers):
        position = (
            ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
        )
        np.testing.assert_allclose(volume.affine @ [0, 0, k, 1], [*ras(position), 1], atol=1e-6)
        slope, intercept = (2, -100) if frame == 3 else (1, -1024)
        np.testing.assert_array_equal(
            volume.array[:, :, k], (stored[frame - 1].astype(int) * slope + intercept).T
        )


@pytest.mark.parametrize(
    ("values", "signed", "slope", "intercept", "dtype"),
    [
        ((0, 1000), False, 1, 0, np.int16),
        ((0, 40000), False, 1, 0, np.uint16),
        ((0, 3000), False, 1, -1024, np.int16),
        ((-5, 5), True, 1, 0, np.int16),
        ((0, 40000), False, 2, 0, np.int32),
        ((0, 10), False, 1, -40000, np.int32),
        ((2, 4), False, 0.5, 0, np.int16),  # non-integer slope, integer results
        ((1, 3), False, 0.5, 0, np.float32),
    ],
)
def test_output_dtype_fits_the_rescaled_values(values, signed, slope, intercept, dtype):
    stored = np.array(values * 6, dtype=np.int16 if signed else np.uint16).reshape(3, 2, 2)
    (volume,) = volumes_from_datasets(
        [dataset_from_bytes(enhanced_ct(stored, [0.0, 1.0, 2.0], slope=slope, intercept=intercept))]
    )
    assert volume.array.dtype == dtype
    expected = stored.astype(np.float64) * slope + intercept
    np.testing.assert_array_equal(volume.array, np.transpose(expected, (2, 1, 0)))


# --- what must fail, and how ----------------------------------------------------------------------
def build_error(series, case: str) -> list[Dataset] | list[bytes]:
    """Inputs for one failure case, made from the real files (datasets, or bytes to parse)."""
    hippo, t1 = series(HIPPO), series(T1POST)
    if case == "truncated in pixel data":
        data = t1["000000.dcm"]
        return [data[: len(data) - 20_000]]
    if case == "truncated by one byte":
        return [hippo["5.dcm"][:-1]]
    if case == "truncated in the header":
        return [t1["000000.dcm"][:1500]]
    if case == "garbage":
        return [bytes(range(256)) * 20]
    if case == "pixel data shortened in memory":
        datasets = parse(hippo)
        numbered(datasets, 4).PixelData = numbered(datasets, 4).PixelData[:-100]
        return datasets
    if case == "image without pixel data":
        datasets = parse(hippo)
        del numbered(datasets, 4).PixelData
        return datasets
    if case in ("missing one", "missing two"):
        drop = {"missing one": {"20.dcm"}, "missing two": {"20.dcm", "21.dcm"}}[case]
        return parse([b for name, b in hippo.items() if name not in drop])
    if case == "missing in tilted series":
        return parse([b for name, b in series(PHILIPS).items() if name != "I30"])
    if case == "same position, new uid":
        datasets = parse(hippo)
        (copy,) = parse([hippo["20.dcm"]])
        copy.SOPInstanceUID, copy.InstanceNumber = generate_uid(), 41
        return [*datasets, copy]
    if case == "same uid, other pixels":
        datasets = parse(hippo)
        (copy,) = parse([hippo["20.dcm"]])
        copy.PixelData = parse([hippo["21.dcm"]])[0].PixelData
        return [*datasets, copy]
    if case == "T1post + FLAIR in one series":
        t1_datasets, flair = parse(t1), parse(series(FLAIR))
        for ds in flair:
            ds.SeriesInstanceUID = t1_datasets[0].SeriesInstanceUID
        return t1_datasets + flair
    if case == "T1post + HippoCrop in one series":
        t1_datasets, crop = parse(t1), parse(hippo)[:3]
        for ds in crop:
            ds.SeriesInstanceUID = t1_datasets[0].SeriesInstanceUID
        return t1_datasets + crop
    if case == "two series":
        return parse(t1) + parse(series(T1PRE))[:2]
    if case == "one slice rotated":
        datasets = parse(hippo)
        numbered(datasets, 14).ImageOrientationPatient = [1, 0, 0, 0, 0.99995, 0.0099998]
        return datasets
    if case == "other frame of reference":
        datasets = parse(hippo)
        numbered(datasets, 14).FrameOfReferenceUID = generate_uid()
        return datasets
    if case == "SEG":
        return [series(Path(LIVER_SEG).parent.as_posix())["liver.dcm"]]
    if case == "label map SEG":
        return [series(Path(LABELMAP_SEG).parent.as_posix())[Path(LABELMAP_SEG).name]]
    if case == "SR":
        (ds,) = parse([hippo["5.dcm"]])
        del ds.PixelData
        ds.SOPClassUID, ds.Modality = UID("1.2.840.10008.5.1.4.1.1.88.11"), "SR"
        return [ds]
    if case == "RGB":
        (ds,) = parse([hippo["5.dcm"]])
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.PixelData = ds.PixelData * 3
        return [ds]
    if case.startswith("geometry"):
        datasets = parse(hippo)
        for ds in datasets:
            if case == "geometry: no ImageOrientationPatient":
                del ds.ImageOrientationPatient
            elif case == "geometry: no ImagePositionPatient":
                del ds.ImagePositionPatient
            elif case == "geometry: no PixelSpacing":
                del ds.PixelSpacing
            elif case == "geometry: non-orthogonal":
                ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.8660254, 0]
            elif case == "geometry: zero normal":
                ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        return datasets
    raise AssertionError(case)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("case", "kind", "words"),
    [
        ("truncated in pixel data", SeriesErrorKind.MALFORMED, ["truncated", "bytes"]),
        ("truncated by one byte", SeriesErrorKind.MALFORMED, ["truncated"]),
        ("truncated in the header", SeriesErrorKind.MALFORMED, ["truncated"]),
        ("garbage", SeriesErrorKind.MALFORMED, ["not a readable DICOM file"]),
        ("pixel data shortened in memory", SeriesErrorKind.MALFORMED, ["instance 4", "could not be decoded"]),
        ("image without pixel data", SeriesErrorKind.MALFORMED, ["instance 4", "without pixel data"]),
        (
            "missing one",
            SeriesErrorKind.MISSING_SLICE,
            [
                "1 slice missing between 19.000 mm (instance 19 [SOP Instance UID ",
                "and 21.000 mm (instance 21 [",
            ],
        ),
        (
            "missing two",
            SeriesErrorKind.MISSING_SLICE,
            ["2 slices missing", "(instance 22 [SOP Instance UID"],
        ),
        ("missing in tilted series", SeriesErrorKind.MISSING_SLICE, ["(instance 2 [", "(instance 4 ["]),
        (
            "same position, new uid",
            SeriesErrorKind.DUPLICATE,
            ["2 slices at 20.000 mm", "instance 20 [SOP Instance UID ", "], instance 41 [SOP Instance UID "],
        ),
        ("same uid, other pixels", SeriesErrorKind.DUPLICATE, ["SOPInstanceUID", "pixel data differ"]),
        ("T1post + FLAIR in one series", SeriesErrorKind.DUPLICATE, ["2 slices at", "instance 1"]),
        ("T1post + HippoCrop in one series", SeriesErrorKind.MIXED, ["22 with 320x280", "3 with 50x34"]),
        ("two series", SeriesErrorKind.MIXED, ["SeriesInstanceUID", "22 with", "2 with"]),
        (
            "one slice rotated",
            SeriesErrorKind.MIXED,
            ["ImageOrientationPatient", "39 with", "(instance 14 ["],
        ),
        ("other frame of reference", SeriesErrorKind.MIXED, ["FrameOfReferenceUID", "(instance 14 ["]),
        ("SEG", SeriesErrorKind.NOT_IMAGE, ["Segmentation Storage", "1.2.840.10008.5.1.4.1.1.66.4", "SEG"]),
        ("label map SEG", SeriesErrorKind.NOT_IMAGE, ["1.2.840.10008.5.1.4.1.1.66.7"]),
        ("SR", SeriesErrorKind.NOT_IMAGE, ["Basic Text SR", "Modality SR"]),
        ("RGB", SeriesErrorKind.NOT_IMAGE, ["colour images (RGB) are not supported"]),
        ("geometry: no ImageOrientationPatient", SeriesErrorKind.GEOMETRY, ["ImageOrientationPatient"]),
        ("geometry: no ImagePositionPatient", SeriesErrorKind.GEOMETRY, ["ImagePositionPatient"]),
        ("geometry: no PixelSpacing", SeriesErrorKind.GEOMETRY, ["PixelSpacing"]),
        ("geometry: non-orthogonal", SeriesErrorKind.GEOMETRY, ["not orthogonal"]),
        ("geometry: zero normal", SeriesErrorKind.GEOMETRY, ["not orthogonal"]),
    ],
)
def test_bad_series_raise_a_precise_error(series, case, kind, words):
    inputs = build_error(series, case)
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets([dataset_from_bytes(x) if isinstance(x, bytes) else x for x in inputs])
    assert caught.value.kind == kind, caught.value.message
    for word in words:
        assert word in caught.value.message
    assert "Dumbledore" not in str(caught.value)  # the fictional PatientName never leaks


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_truncated_file_never_becomes_a_volume(series):
    data = series(HIPPO)["5.dcm"]
    for cut in range(0, len(data), 37):
        with pytest.raises(SeriesError) as caught:
            volumes_from_datasets([dataset_from_bytes(data[:cut])])
        assert caught.value.kind == SeriesErrorKind.MALFORMED, (cut, caught.value.message)


def with_compressed_garbage(data: bytes, syntax: UID) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\x00not a codestream" * 8])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds)


def test_undecodable_jpeg2000_names_the_transfer_syntax(series):
    # Rule: no installed decoder for the syntax -> UNSUPPORTED_TRANSFER_SYNTAX (checked up front);
    # a decoder that is installed but fails on the data -> MALFORMED. Pillow decodes JPEG 2000 here.
    ds = dataset_from_bytes(with_compressed_garbage(series(HIPPO)["5.dcm"], JPEG2000Lossless))
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets([ds])
    available = get_decoder(JPEG2000Lossless).is_available
    expected = SeriesErrorKind.MALFORMED if available else SeriesErrorKind.UNSUPPORTED_TRANSFER_SYNTAX
    assert caught.value.kind == expected
    assert "JPEG 2000" in caught.value.message and str(JPEG2000Lossless) in caught.value.message


def test_transfer_syntax_without_a_decoder_is_unsupported(series):
    missing = [uid for uid in (HTJ2KLossless, JPEGLosslessSV1) if not get_decoder(uid).is_available]
    if not missing:
        pytest.skip("every candidate transfer syntax has a decoder installed")
    ds = dataset_from_bytes(with_compressed_garbage(series(HIPPO)["5.dcm"], missing[0]))
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets([ds])
    assert caught.value.kind == SeriesErrorKind.UNSUPPORTED_TRANSFER_SYNTAX
    assert missing[0].name in caught.value.message and str(missing[0]) in caught.value.message


def test_enhanced_frames_at_one_position_are_duplicates():
    stored = np.zeros((3, 2, 2), dtype=np.uint16)
    ds = dataset_from_bytes(enhanced_ct(stored, [0.0, 2.5, 2.5]))
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets([ds])
    assert caught.value.kind == SeriesErrorKind.DUPLICATE
    assert "frame 2" in caught.value.message and "frame 3" in caught.value.message


def test_empty_series_is_rejected():
    with pytest.raises(SeriesError) as caught:
        volumes_from_datasets([])
    assert caught.value.kind == SeriesErrorKind.NOT_IMAGE


def test_positions_rounded_by_the_scanner_still_make_one_uniform_volume():
    """Thin CT slices (0.625 mm) whose positions are written to 0.01 mm vary by up to 0.02 mm a step."""
    from ml_worker.io.nifti_to_dicom import array_to_dicom_series

    affine = np.diag([0.7, 0.7, 0.625, 1.0])
    affine[:3, 3] = [-120.0, -110.0, -73.3]
    datasets = array_to_dicom_series(
        np.zeros((8, 6, 40), np.uint16),
        affine,
        key="rounded",
        patient_id="P",
        patient_name="P^P",
        study_description="s",
        series_description="s",
    )
    for ds in datasets:
        ds.ImagePositionPatient = [round(float(v), 2) for v in ds.ImagePositionPatient]

    (volume,) = volumes_from_datasets(datasets)

    assert volume.shape == (8, 6, 40)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.7, 0.625), atol=2e-3)
