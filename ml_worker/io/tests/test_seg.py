from __future__ import annotations

import copy
import io
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ml_worker.io.nifti_to_dicom import nifti_to_dicom_series, series_to_bytes
from ml_worker.io.seg import ANATOMICAL_STRUCTURE, TISSUE, SegmentSpec, mask_to_seg, seg_to_mask

# The dcmqi test objects carry single-component PatientNames, which highdicom warns about.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")


def sorted_sources(folder: Path) -> list[pydicom.Dataset]:
    """The images of a series, ascending along the slice normal (the Volume's slice order)."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(normal @ np.array(ds.ImagePositionPatient, dtype=float)))


def grid(sources) -> dict:
    return dict(
        sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
        shape=(int(sources[0].Columns), int(sources[0].Rows), len(sources)),
    )


def read_nrrd(path: Path) -> np.ndarray:
    """dcmqi's NRRD label maps, indexed [i, j, k] like a Volume (SimpleITK gives [k, j, i])."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def to_bytes_and_back(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def new_uids() -> dict:
    return dict(series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())


@pytest.fixture(scope="module")
def dicom_seg(shared_data) -> Path:
    return shared_data / "dicom-seg"


@pytest.fixture(scope="module")
def ct_sources(dicom_seg) -> list[pydicom.Dataset]:
    return sorted_sources(dicom_seg / "ct-3slice" / "image")


@pytest.fixture(scope="module")
def liver_mask(dicom_seg, ct_sources) -> np.ndarray:
    mask, names = seg_to_mask(
        pydicom.dcmread(dicom_seg / "ct-3slice" / "seg" / "liver.dcm"), **grid(ct_sources)
    )
    assert names == {1: "Liver"}
    return mask


def test_reads_dcmqi_liver(dicom_seg, liver_mask):
    assert liver_mask.shape == (512, 512, 3)
    assert int(np.count_nonzero(liver_mask)) == 107_098
    expected = read_nrrd(dicom_seg / "ct-3slice" / "nrrd" / "liver_seg.nrrd")
    np.testing.assert_array_equal(liver_mask, expected)


@pytest.mark.parametrize("metadata_only", [False, True], ids=["full-instances", "metadata-only"])
def test_liver_write_read_round_trip(ct_sources, liver_mask, metadata_only):
    sources = ct_sources
    if metadata_only:  # what WADO-RS metadata gives: no PixelData
        sources = [copy.deepcopy(ds) for ds in ct_sources]
        for ds in sources:
            del ds.PixelData
    seg = mask_to_seg(
        liver_mask,
        source_images=sources,
        segments=[SegmentSpec(label=1, name="Liver", rgb=(221, 130, 101))],
        content_creator="Doe^Jane",
        **new_uids(),
    )
    reread = to_bytes_and_back(seg)
    assert reread.SegmentationType == "BINARY"
    assert reread.StudyInstanceUID == ct_sources[0].StudyInstanceUID
    assert reread.FrameOfReferenceUID == ct_sources[0].FrameOfReferenceUID
    assert reread.SeriesNumber == 900 and reread.SeriesDescription == "Segmentation"

    mask, names = seg_to_mask(reread, **grid(ct_sources))
    np.testing.assert_array_equal(mask, liver_mask)
    assert names == {1: "Liver"}


def test_uids_come_from_the_caller(ct_sources, liver_mask):
    uids = new_uids()
    first = mask_to_seg(liver_mask, source_images=ct_sources, segments=[SegmentSpec(1, "Liver")], **uids)
    second = mask_to_seg(liver_mask, source_images=ct_sources, segments=[SegmentSpec(1, "Liver")], **uids)
    assert first.SOPInstanceUID == second.SOPInstanceUID == uids["sop_instance_uid"]
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == uids["series_instance_uid"]


def test_partial_overlaps_later_segment_wins(dicom_seg, ct_sources):
    dataset = pydicom.dcmread(dicom_seg / "ct-3slice" / "seg" / "partial_overlaps.dcm")
    mask, names = seg_to_mask(dataset, **grid(ct_sources))
    assert names == {1: "GREEN", 2: "ORANGE", 3: "PURPLE", 4: "LIGHT_BLUE", 5: "DARK_BLUE"}

    stacked = hd.seg.Segmentation.from_dataset(dataset).get_pixels_by_source_instance(
        grid(ct_sources)["sop_instance_uids"], ignore_spatial_locations=True
    )  # (slices, rows, columns, segments)
    assert int(stacked.sum()) == 43_639
    numbers = np.arange(1, 6)
    expected = np.max(np.where(stacked > 0, numbers, 0), axis=-1).transpose(2, 1, 0)
    np.testing.assert_array_equal(mask, expected)
    assert int(np.count_nonzero(mask)) == int(np.count_nonzero(stacked.any(axis=-1)))


def test_reads_sparse_labelmap(dicom_seg):
    case = dicom_seg / "phantom-24x38x3"
    sources = sorted_sources(case / "image")
    mask, names = seg_to_mask(pydicom.dcmread(case / "seg" / "sparse-labelmap-noppv.dcm"), **grid(sources))
    assert names == {1: "Liver"}
    assert int(np.count_nonzero(mask)) == 630
    assert not mask[:, :, 1].any()  # the slice the SEG has no frame for
    np.testing.assert_array_equal(mask, read_nrrd(case / "nrrd" / "sparse_labelmap_noppv_seg.nrrd"))


@pytest.mark.parametrize(("case", "count"), [("phantom-23x38x3", 322), ("phantom-24x38x3", 315)])
def test_reads_phantom_label_seg(dicom_seg, case, count):
    sources = sorted_sources(dicom_seg / case / "image")
    mask, _ = seg_to_mask(pydicom.dcmread(dicom_seg / case / "seg" / "label.seg"), **grid(sources))
    assert mask.shape == (int(sources[0].Columns), 38, 3)
    assert int(np.count_nonzero(mask)) == count
    np.testing.assert_array_equal(mask, read_nrrd(dicom_seg / case / "nrrd" / "label.nrrd"))


@pytest.fixture(scope="module")
def hippocampus(shared_data) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """hippocampus_004 as a DICOM series (re-read from bytes) and its label map."""
    case = "hippocampus_004"
    datasets = nifti_to_dicom_series(
        shared_data / "hippocampus" / "imagesTr" / f"{case}.nii.gz",
        key=case,
        patient_id="HIPPO-004",
        patient_name="Hippocampus^004",
        study_description="MSD Task04",
        series_description="T1 crop",
    )
    sources = [pydicom.dcmread(io.BytesIO(data)) for data in series_to_bytes(datasets)]
    labels = np.asarray(nib.load(shared_data / "hippocampus" / "labelsTr" / f"{case}.nii.gz").dataobj)
    return sources, labels


def test_multi_label_round_trip_on_converted_hippocampus(hippocampus):
    sources, labels = hippocampus
    segments = [
        SegmentSpec(label=1, name="Anterior", rgb=(255, 0, 0)),
        SegmentSpec(label=2, name="Posterior", rgb=(0, 0, 255)),
    ]
    seg = to_bytes_and_back(mask_to_seg(labels, source_images=sources, segments=segments, **new_uids()))
    assert seg.NumberOfFrames == sum(int(np.any(labels[:, :, k] == v)) for v in (1, 2) for k in range(38))
    mask, names = seg_to_mask(seg, **grid(sources))
    np.testing.assert_array_equal(mask, labels)
    assert names == {1: "Anterior", 2: "Posterior"}


def test_labels_map_to_segment_numbers_in_spec_order(hippocampus):
    sources, labels = hippocampus
    relabelled = np.select([labels == 1, labels == 2], [7, 3], 0).astype(np.int16)
    segments = [SegmentSpec(label=7, name="Anterior"), SegmentSpec(label=3, name="Posterior")]
    seg = mask_to_seg(relabelled, source_images=sources, segments=segments, **new_uids())
    mask, names = seg_to_mask(seg, **grid(sources))
    np.testing.assert_array_equal(mask, labels)
    assert names == {1: "Anterior", 2: "Posterior"}


def test_empty_mask_still_makes_a_seg(hippocampus):
    sources, labels = hippocampus
    empty = np.zeros_like(labels)
    seg = mask_to_seg(empty, source_images=sources, segments=[SegmentSpec(1, "Anterior")], **new_uids())
    mask, _ = seg_to_mask(to_bytes_and_back(seg), **grid(sources))
    assert not mask.any()


def descriptions(n: int) -> list[hd.seg.SegmentDescription]:
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"segment {number}",
            segmented_property_category=Code(*ANATOMICAL_STRUCTURE),
            segmented_property_type=Code(*TISSUE),
            algorithm_type="MANUAL",
        )
        for number in range(1, n + 1)
    ]


def highdicom_seg(sources, pixel_array, segmentation_type: str) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions(2),
        series_number=5,
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        **new_uids(),
    )


def test_reads_fractional_thresholded_at_half(hippocampus):
    sources, labels = hippocampus
    probabilities = np.zeros(labels.shape + (2,), dtype=np.float32)
    probabilities[..., 0] = np.where(labels == 1, 0.8, 0.3)  # 0.3 everywhere else: below the threshold
    probabilities[..., 1] = np.where(labels == 2, 0.5, 0.0)
    seg = highdicom_seg(sources, np.ascontiguousarray(probabilities.transpose(2, 1, 0, 3)), "FRACTIONAL")
    mask, names = seg_to_mask(to_bytes_and_back(seg), **grid(sources))
    np.testing.assert_array_equal(mask, labels)
    assert names == {1: "segment 1", 2: "segment 2"}


def test_reads_labelmap_with_two_segments(hippocampus):
    sources, labels = hippocampus
    seg = highdicom_seg(sources, np.ascontiguousarray(labels.transpose(2, 1, 0)), "LABELMAP")
    mask, names = seg_to_mask(to_bytes_and_back(seg), **grid(sources))
    np.testing.assert_array_equal(mask, labels)
    assert names == {1: "segment 1", 2: "segment 2"}


def test_reads_seg_of_a_multiframe_source_by_frame_number(hippocampus):
    sources, labels = hippocampus
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    # Frame f's position along z; slice k of the Volume is the frame at z = k (affine origin z = 1).
    z = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in enhanced.PerFrameFunctionalGroupsSequence
    ]
    frame_of_slice = [z.index(float(k + 1)) + 1 for k in range(labels.shape[2])]
    frames_array = np.zeros((len(z),) + labels.shape[1::-1], dtype=np.uint8)
    for k, frame in enumerate(frame_of_slice):
        frames_array[frame - 1] = labels[:, :, k].T
    seg = highdicom_seg([enhanced], frames_array, "BINARY")
    mask, _ = seg_to_mask(
        seg,
        sop_instance_uids=[enhanced.SOPInstanceUID] * labels.shape[2],
        frame_numbers=frame_of_slice,
        shape=labels.shape,
    )
    np.testing.assert_array_equal(mask, labels)


def test_mask_to_seg_errors(hippocampus):
    sources, labels = hippocampus
    spec = [SegmentSpec(1, "Anterior"), SegmentSpec(2, "Posterior")]
    with pytest.raises(ValueError, match=r"mask shape \(36, 52, 37\) does not match .* \(36, 52, 38\)"):
        mask_to_seg(labels[:, :, :-1], source_images=sources, segments=spec, **new_uids())
    with pytest.raises(ValueError, match=r"mask shape .* does not match"):
        mask_to_seg(labels.transpose(1, 0, 2), source_images=sources, segments=spec, **new_uids())
    wrong = labels.copy()
    wrong[0, 0, 0], wrong[1, 0, 0] = 5, 9
    with pytest.raises(ValueError, match=r"no SegmentSpec: \[5, 9\]"):
        mask_to_seg(wrong, source_images=sources, segments=spec, **new_uids())
    with pytest.raises(ValueError, match=r"no SegmentSpec: \[2\]"):
        mask_to_seg(labels, source_images=sources, segments=spec[:1], **new_uids())
    with pytest.raises(ValueError, match="unique"):
        mask_to_seg(labels, source_images=sources, segments=[spec[0], spec[0]], **new_uids())
    with pytest.raises(ValueError, match="positive"):
        mask_to_seg(labels, source_images=sources, segments=[SegmentSpec(0, "Background")], **new_uids())


def test_seg_to_mask_errors(dicom_seg, ct_sources, hippocampus):
    liver = pydicom.dcmread(dicom_seg / "ct-3slice" / "seg" / "liver.dcm")
    sources, labels = hippocampus
    with pytest.raises(ValueError, match="references none"):
        seg_to_mask(liver, sop_instance_uids=[generate_uid() for _ in range(3)], shape=(512, 512, 3))
    with pytest.raises(ValueError, match="grid is 36x52"):
        seg_to_mask(liver, **grid(sources))
    with pytest.raises(ValueError, match="2 sop_instance_uids for 3 slices"):
        seg_to_mask(liver, sop_instance_uids=grid(ct_sources)["sop_instance_uids"][:2], shape=(512, 512, 3))
