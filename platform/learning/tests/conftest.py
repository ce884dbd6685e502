"""Fixtures of the learning tests: the annotation fixtures (users, volumes), and a small hippocampus
project built from the shared data, with an `approve` step that goes through the annotation services
(take, save, submit, approve) as annotators and reviewers would."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.utils import timezone

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
from annotation.tests import conftest as annotation_fixtures
from annotation.tests.conftest import _media_root, make_volume, users  # noqa: F401 (fixtures)
from learning.models import ModelVersion
from learning.services import policy_get

project = annotation_fixtures.project  # the two-class "Hippocampus" project, as the annotation tests have it

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


@pytest.fixture
def approved_case(users, make_volume):  # noqa: F811 (the fixtures imported above)
    """approved_case(project, split) -> a new case of a small synthetic volume in ``split``, saved and
    submitted by the annotator and approved by the reviewer through the annotation services."""
    from annotation.tests.helpers import SHAPE

    def make(project, split: str) -> Case:
        project_volumes_add(project=project, volumes=[make_volume()], user=None)
        case = Case.objects.filter(project=project).order_by("-id").first()
        Case.objects.filter(pk=case.pk).update(split=split)
        case.refresh_from_db()
        case_take(case=case, user=users["annotator"])
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[2:5, 2:5, 1:3] = 1
        version = mask_version_create(case=case, user=users["annotator"], parent=None, mask=mask)
        case_submit(case=case, user=users["annotator"], version=version)
        case_review(case=case, user=users["reviewer"], version=version, decision="approve")
        return case

    return make


def model_version(
    project, number: int, *, state: str, parent=None, gate=None, dice=0.5, approved=0, active_at=None
):
    return ModelVersion.objects.create(
        project=project,
        number=number,
        state=state,
        parent=parent,
        method="lora_conv" if parent else "full",
        base_path="models/base.pt",
        base_sha256="0" * 64,
        adapter_path=f"models/v{number}.adapter.pt",
        adapter_sha256="1" * 64,
        weights_path=f"models/v{number}.pt",
        weights_sha256="2" * 64,
        snapshot=list(range(1, approved + 1)),
        validation_dice=dice,
        gate=gate or {},
        train_seconds=75.0 * number,
        activated_at=active_at,
    )


@pytest.fixture
def registry(project):  # noqa: F811 (the fixture imported above)
    """v1 (was active, retired) <- v2 (active) <- v3 (candidate, gate passed) and v4 (candidate, gate
    failed)."""
    now = timezone.now()
    v1 = model_version(
        project, 1, state="retired", dice=0.61, approved=5, active_at=now - timedelta(days=2),
        gate={"promotable": True, "reason": "first model: Dice 0.610 >= floor 0.500"},
    )  # fmt: skip
    v2 = model_version(
        project, 2, state="active", parent=v1, dice=0.70, approved=10, active_at=now - timedelta(days=1),
        gate={"promotable": True, "reason": "better than v1", "p_value": 0.01, "mean_delta": 0.09, "n": 6},
    )  # fmt: skip
    v3 = model_version(
        project, 3, state="candidate", parent=v2, dice=0.74, approved=15,
        gate={"promotable": True, "reason": "better than v2 by 0.040 (p=0.020)", "p_value": 0.02},
    )  # fmt: skip
    v4 = model_version(
        project, 4, state="candidate", parent=v2, dice=0.69, approved=15,
        gate={"promotable": False, "reason": "not better than the active model (p=0.410)", "p_value": 0.41},
    )  # fmt: skip
    return {1: v1, 2: v2, 3: v3, 4: v4}


def small_policy(project, *, epochs: int = 2, steps: int = 3, **changes):
    """A few steps of a small network on a 2 mm grid, and a floor of 0 for a first model: tests of the
    loop, not of what the model learns."""
    policy = policy_get(project)
    policy.epochs, policy.steps_per_epoch, policy.first_floor = epochs, steps, 0.0
    policy.network = {"init_filters": 8, "roi_size": [24, 32, 24], "spacing": [2.0, 2.0, 2.0]}
    for k, v in changes.items():
        setattr(policy, k, v)
    policy.save()
    return policy
