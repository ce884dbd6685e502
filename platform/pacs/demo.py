"""The demo PACS content: every DICOM file under shared/data, and the MSD hippocampus cases as
real DICOM MR studies (one study per case). Each study comes as a bundle that knows its UID and
instance count before anything is read, so a PACS that already holds it is skipped cheaply."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pydicom
from pydicom import Dataset

from ml_worker.io.nifti_to_dicom import deterministic_uid, nifti_to_dicom_series

DICOM_FOLDERS = ("dicom", "dicom-seg", "dicom-edge")


@dataclass(frozen=True)
class StudyBundle:
    study_instance_uid: str
    num_instances: int
    label: str
    load: Callable[[], list[Dataset]]


def demo_bundles(shared_data: Path, *, hippocampus_limit: int | None = None) -> Iterator[StudyBundle]:
    if not (shared_data / "hippocampus").is_dir():
        raise FileNotFoundError(f"No demo data at {shared_data} (set ANNOTATOR_SHARED_DATA).")
    yield from dicom_file_bundles([shared_data / name for name in DICOM_FOLDERS])
    yield from hippocampus_bundles(shared_data / "hippocampus", limit=hippocampus_limit)


def dicom_file_bundles(folders: list[Path]) -> Iterator[StudyBundle]:
    """DICOM files under ``folders`` (any name, extension or none), grouped by study."""
    studies: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            except pydicom.errors.InvalidDicomError:
                continue  # licences, JSON, NRRD beside the DICOM files
            studies[str(header.StudyInstanceUID)].append(path)
    for uid, paths in studies.items():
        yield StudyBundle(uid, len(paths), f"{paths[0].parent.name} ({len(paths)} files)", _reader(paths))


def hippocampus_bundles(folder: Path, *, limit: int | None = None) -> Iterator[StudyBundle]:
    """MSD hippocampus images as MR studies; UIDs derive from the case name, so they never change."""
    images = sorted((folder / "imagesTr").glob("hippocampus_*.nii.gz"))[:limit]
    for path in images:
        case = path.name.removesuffix(".nii.gz")
        slices = int(nib.load(str(path)).shape[2])
        yield StudyBundle(deterministic_uid(case, "study"), slices, case, _converter(path, case))


def _reader(paths: list[Path]) -> Callable[[], list[Dataset]]:
    return lambda: [pydicom.dcmread(p) for p in paths]


def _converter(path: Path, case: str) -> Callable[[], list[Dataset]]:
    number = case.split("_")[-1]
    return lambda: nifti_to_dicom_series(
        path,
        key=case,
        patient_id=f"HIPPO-{number}",
        patient_name=f"Hippocampus^Case {number}",
        study_description=f"MSD Hippocampus {number}",
        series_description="T1 hippocampus crop",
    )
