from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from ml_worker.io.nifti_to_dicom import array_to_dicom_series, nifti_to_dicom_series, series_to_bytes
from ml_worker.io.volume import LPS_TO_RAS

IDENTITY = dict(
    patient_id="HIPPO-001",
    patient_name="Hippocampus^Case",
    study_description="MSD Task04 hippocampus",
    series_description="T1 crop",
)

# Type 1 and Type 2 attributes of the MR Image IOD modules we write (Type 2 may be empty).
REQUIRED = {
    "patient": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"],
    "general study": [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ],
    "general series": ["Modality", "SeriesInstanceUID", "SeriesNumber", "PatientPosition"],
    "frame of reference": ["FrameOfReferenceUID", "PositionReferenceIndicator"],
    "general equipment": ["Manufacturer"],
    "general image": ["InstanceNumber"],
    "image plane": ["PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness"],
    "image pixel": [
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
    ],
    "mr image": [
        "ImageType",
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "MRAcquisitionType",
        "RepetitionTime",
        "EchoTime",
        "EchoTrainLength",
    ],
    "sop common": ["SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet"],
}
TYPE1 = {
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelData",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "SOPClassUID",
    "SOPInstanceUID",
}


def reread(datasets):
    return [pydicom.dcmread(io.BytesIO(data)) for data in series_to_bytes(datasets)]


def affine_from_datasets(datasets) -> np.ndarray:
    """Rebuild voxel -> RAS from the headers alone (slices in the given order)."""
    first = datasets[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * column_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = positions[1] - positions[0] if len(datasets) > 1 else np.cross(iop[:3], iop[3:])
    lps[:3, 3] = positions[0]
    steps = np.diff(positions, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(lps[:3, 2], steps.shape), atol=1e-4)
    return LPS_TO_RAS @ lps


def array_from_datasets(datasets) -> np.ndarray:
    return np.stack([apply_modality_lut(ds.pixel_array, ds).T for ds in datasets], axis=2)


def quantisation_step(ds) -> float:
    return float(ds.RescaleSlope)


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_003", "hippocampus_004"])
def test_hippocampus_case_round_trips(shared_data, case):
    path = shared_data / "hippocampus" / "imagesTr" / f"{case}.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)

    datasets = reread(nifti_to_dicom_series(path, key=f"test/{case}", **IDENTITY))

    assert len(datasets) == data.shape[2]
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, data.shape[2] + 1))
    first = datasets[0]
    assert (first.Columns, first.Rows) == data.shape[:2]
    assert first.SOPClassUID == MRImageStorage
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    np.testing.assert_allclose(affine_from_datasets(datasets), image.affine, atol=1e-4)
    assert float(first.SliceThickness) == pytest.approx(1.0)

    restored = array_from_datasets(datasets)
    if data.dtype.kind in "ui":
        assert float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == 0.0
        np.testing.assert_array_equal(restored, data)
    else:
        step = quantisation_step(first)
        assert step == pytest.approx((data.max() - data.min()) / 65535, rel=1e-6)
        assert np.max(np.abs(restored - data)) <= step


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_004"])
def test_required_attributes_present(shared_data, case):
    path = shared_data / "hippocampus" / "imagesTr" / f"{case}.nii.gz"
    for ds in reread(nifti_to_dicom_series(path, key=case, **IDENTITY)):
        for module, keywords in REQUIRED.items():
            missing = [kw for kw in keywords if kw not in ds]
            assert not missing, f"{module}: {missing}"
        empty = [kw for kw in TYPE1 if ds[kw].is_empty]
        assert not empty
        assert ds.PatientID == IDENTITY["patient_id"]
        assert str(ds.PatientName) == IDENTITY["patient_name"]
        assert ds.StudyDescription == IDENTITY["study_description"]
        assert ds.SeriesDescription == IDENTITY["series_description"]
        assert ds.StudyDate == ds.SeriesDate == ds.ContentDate == "20200101"


def test_conversion_is_deterministic(shared_data):
    path = shared_data / "hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"
    once = series_to_bytes(nifti_to_dicom_series(path, key="hippocampus_004", **IDENTITY))
    twice = series_to_bytes(nifti_to_dicom_series(path, key="hippocampus_004", **IDENTITY))
    assert once == twice

    other = nifti_to_dicom_series(path, key="hippocampus_004-bis", **IDENTITY)
    first = pydicom.dcmread(io.BytesIO(once[0]))
    assert other[0].StudyInstanceUID != first.StudyInstanceUID
    assert other[0].SeriesInstanceUID != first.SeriesInstanceUID
    assert other[0].SOPInstanceUID != first.SOPInstanceUID
    assert other[0].FrameOfReferenceUID != first.FrameOfReferenceUID


def oblique_affine() -> np.ndarray:
    angle_z, angle_x = np.deg2rad(25.0), np.deg2rad(-12.0)
    rot_z = np.array(
        [[np.cos(angle_z), -np.sin(angle_z), 0], [np.sin(angle_z), np.cos(angle_z), 0], [0, 0, 1]]
    )
    rot_x = np.array(
        [[1, 0, 0], [0, np.cos(angle_x), -np.sin(angle_x)], [0, np.sin(angle_x), np.cos(angle_x)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([0.7, 0.7, 3.0])
    affine[:3, 3] = [-101.25, 37.5, 12.125]
    return affine


def test_oblique_anisotropic_float_round_trips():
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(11, 7, 5)) * 300.0 - 50.0).astype(np.float32)
    affine = oblique_affine()

    datasets = reread(array_to_dicom_series(array, affine, key="synthetic/oblique", **IDENTITY))

    np.testing.assert_allclose(affine_from_datasets(datasets), affine, atol=1e-4)
    assert [float(v) for v in datasets[0].PixelSpacing] == pytest.approx([0.7, 0.7])
    assert float(datasets[0].SliceThickness) == pytest.approx(3.0)
    assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(3.0)
    restored = array_from_datasets(datasets)
    assert np.max(np.abs(restored - array)) <= quantisation_step(datasets[0])


@pytest.mark.parametrize(
    ("array", "slope", "intercept"),
    [
        (np.array([0, 1, 65535], dtype=np.int32), 1.0, 0.0),
        (np.array([-1024, 0, 3071], dtype=np.int16), 1.0, -1024.0),
        (np.array([0.0, 2.0, 1_700_000.0], dtype=np.float32), None, 0.0),
    ],
)
def test_integer_values_are_exact_and_wide_ranges_are_scaled(array, slope, intercept):
    volume = np.broadcast_to(array[:, None, None], (3, 2, 2)).copy()
    datasets = reread(array_to_dicom_series(volume, np.diag([1.0, 2.0, 3.0, 1.0]), key="scaling", **IDENTITY))
    first = datasets[0]
    assert float(first.RescaleIntercept) == intercept
    restored = array_from_datasets(datasets)
    if slope is not None:
        assert float(first.RescaleSlope) == slope
        np.testing.assert_array_equal(restored, volume)
    else:
        assert np.max(np.abs(restored - volume)) <= quantisation_step(first)


def test_rejects_what_dicom_cannot_hold():
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="perpendicular"):
        array_to_dicom_series(np.zeros((2, 2, 2)), sheared, key="x", **IDENTITY)
    with pytest.raises(ValueError, match="NaN"):
        array_to_dicom_series(np.full((2, 2, 2), np.nan), np.eye(4), key="x", **IDENTITY)
    with pytest.raises(ValueError, match="3D"):
        array_to_dicom_series(np.zeros((2, 2)), np.eye(4), key="x", **IDENTITY)
