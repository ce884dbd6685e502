"""Fixtures of the learning tests: the annotation fixtures (users, volumes), and a small hippocampus
project built from the shared data, with an `approve` step that goes through the annotation services
(take, save, submit, approve) as annotators and reviewers would."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotation.models import Case
from annotation.services import (
    Effort,
    LabelSpec,
    case_review,
    case_submit,
    case_take,
    mask_version_create,
    project_create,
    project_volumes_add,
)
from annotation.tests.conftest import _media_root, make_volume, users  # noqa: F401 (fixtures)

HIPPOCAMPUS = Path(
    os.environ.get("ANNOTATOR_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared/data")
)
HIPPOCAMPUS = HIPPOCAMPUS / "hippocampus"


def hippocampus(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label, affine) of MSD hippocampus case number `index` (1-based, as the file names)."""
    name = f"hippocampus_{index:03d}.nii.gz"
    image = nib.load(HIPPOCAMPUS / "imagesTr" / name)
    label = nib.load(HIPPOCAMPUS / "labelsTr" / name)
    return (
        np.asarray(image.dataobj).astype(np.int16),
        np.rint(np.asarray(label.dataobj)).astype(np.uint8),
        image.affine,
    )


class HippoProject:
    """A project over real hippocampus volumes; cases by split, and their ground truth."""

    def __init__(self, project, cases: dict[str, list[Case]], truth: dict[int, np.ndarray], people):
        self.project, self.cases, self.truth, self.users = project, cases, truth, people

    def approve(self, case: Case) -> None:
        """The annotator saves the ground truth, submits; the reviewer approves."""
        annotator, reviewer = self.users["annotator"], self.users["reviewer"]
        case_take(case=case, user=annotator)
        head = case.versions.order_by("-number").first()
        version = mask_version_create(
            case=case, user=annotator, parent=head, mask=self.truth[case.id], effort=Effort(seconds=30.0)
        )
        case_submit(case=case, user=annotator, version=version)
        case_review(case=case, user=reviewer, version=version, decision="approve")


@pytest.fixture
def hippo_project(users, make_volume):  # noqa: F811 (the fixtures imported above)
    """hippo_project(train=5, validation=5, pool=4) -> HippoProject (splits set by the test)."""

    def make(train: int = 5, validation: int = 5, pool: int = 4) -> HippoProject:
        project = project_create(
            name="Hippocampus loop",
            modality="MR",
            labels=[LabelSpec(1, "anterior", "#e4572e"), LabelSpec(2, "posterior", "#29a36a")],
            user=users["admin"],
        )
        cases: dict[str, list[Case]] = {}
        truth: dict[int, np.ndarray] = {}
        index = 1
        for split, n in (("train", train), ("validation", validation), ("pool", pool)):
            for _ in range(n):
                while not (HIPPOCAMPUS / "imagesTr" / f"hippocampus_{index:03d}.nii.gz").exists():
                    index += 1
                image, label, affine = hippocampus(index)
                index += 1
                volume = make_volume(array=image, affine=affine)
                project_volumes_add(project=project, volumes=[volume], user=None)
                case = Case.objects.get(project=project, volume=volume)
                case.split = "train" if split == "pool" else split
                case.save(update_fields=["split"])
                cases.setdefault(split, []).append(case)
                truth[case.id] = label
        return HippoProject(project, cases, truth, users)

    return make
