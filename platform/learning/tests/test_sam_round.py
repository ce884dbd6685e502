"""LiteMedSAM in the learning loop, on the real PostgreSQL: a round adapts its decoder on approved cases,
is judged against the LiteMedSAM that answers now and promoted like a native round, in its own lineage
(the native net stays active and keeps pre-segmenting); boxes and clicks go to whichever model did better
on the interactive curve of the same validation cases; a version whose file is damaged fails clearly.
Volumes are 32x32x3 discs: every slice costs one encoder pass on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotation.models import Case
from annotation.services import project_volumes_add
from common.media import media_path, media_relative
from learning.models import Job, ModelVersion
from learning.selectors import interactive_route
from learning.services import (
    active_version,
    adaptation_run,
    model_promote,
    sam_adaptation_run,
    sam_adaptation_start,
)
from learning.tests.conftest import HippoProject, hippocampus, model_version, small_policy
from ml_worker.models.checkpoints import file_sha256, litemedsam_weights_path
from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _one_thread(settings, tmp_path):
    torch.set_num_threads(1)


def disc(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc of label 1 on slices 1 and 2 with a core of label 2 on slice 2 (32x32x3)."""
    rng = np.random.default_rng(seed)
    row, col = rng.integers(12, 20, size=2)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    distance = (rows - row) ** 2 + (cols - col) ** 2
    label = np.zeros((32, 32, 3), np.uint8)
    label[..., 1][distance <= 64] = 1
    label[..., 2][distance <= 64] = 1
    label[..., 2][distance <= 16] = 2
    image = (label * 70.0 + rng.normal(0, 5, label.shape)).astype(np.int16)
    return image, label


@pytest.fixture
def disc_project(project, users, make_volume):
    """The project with two approved train and two approved validation disc cases."""
    cases, truth = {}, {}
    for i, split in enumerate(("train", "train", "validation", "validation")):
        image, label = disc(i)
        volume = make_volume(array=image, affine=np.eye(4))
        project_volumes_add(project=project, volumes=[volume], user=None)
        case = Case.objects.get(project=project, volume=volume)
        Case.objects.filter(pk=case.pk).update(split=split)
        case.refresh_from_db()
        cases.setdefault(split, []).append(case)
        truth[case.id] = label
    hp = HippoProject(project, cases, truth, users)
    for case in cases["train"] + cases["validation"]:
        hp.approve(case)
    # 20 decoder steps; two validation cases suffice for the paired test at alpha 0.5
    small_policy(project, epochs=1, steps=20, alpha=0.5, margin=0.0)
    return hp


@pytest.fixture
def hippo_crops(project, users, make_volume):
    """The project with two approved train and two approved validation cases: real hippocampus
    volumes cut to the 5 slices around each one's largest (the bundled LiteMedSAM is mediocre on them)."""
    cases, truth = {}, {}
    for index, split in ((1, "train"), (3, "train"), (4, "validation"), (7, "validation")):
        image, label, _ = hippocampus(index)
        k = int(np.argmax((label > 0).sum(axis=(0, 1))))
        volume = make_volume(array=image[..., k - 2 : k + 3], affine=np.eye(4))
        project_volumes_add(project=project, volumes=[volume], user=None)
        case = Case.objects.get(project=project, volume=volume)
        Case.objects.filter(pk=case.pk).update(split=split)
        case.refresh_from_db()
        cases.setdefault(split, []).append(case)
        truth[case.id] = label[..., k - 2 : k + 3]
    hp = HippoProject(project, cases, truth, users)
    for case in cases["train"] + cases["validation"]:
        hp.approve(case)
    small_policy(project, epochs=1, steps=20, alpha=0.5, margin=0.0)
    return hp


def native_version(project, number: int) -> ModelVersion:
    """An active native version whose weights are a small (untrained) native 3D net in the media store."""
    config = Native3DConfig(
        num_classes=2,
        class_names=("anterior", "posterior"),
        init_filters=8,
        roi_size=(16, 16, 8),
        spacing=None,
    )
    torch.manual_seed(0)
    weights = save_native3d(config.build(), config, media_path(f"models/project-{project.id}/native.pt"))
    version = model_version(project, number, state="active", gate={"promotable": True, "reason": "test"})
    ModelVersion.objects.filter(pk=version.pk).update(
        weights_path=media_relative(weights), weights_sha256=file_sha256(weights)
    )
    return ModelVersion.objects.get(pk=version.pk)


@pytest.mark.timeout(900)  # 20 encoder passes and 20 decoder steps: minutes on a busy 2-core CPU
def test_a_litemedsam_round_is_judged_promoted_in_its_own_lineage_and_takes_the_clicks(
    hippo_crops, django_capture_on_commit_callbacks
):
    project = hippo_crops.project
    native = native_version(project, 1)
    assert interactive_route(project=project).model == "native3d"
    with django_capture_on_commit_callbacks(execute=True):
        job, created = sam_adaptation_start(project=project, user=None)
        assert created and job.kind == Job.Kind.ADAPT_SAM
        again, created = sam_adaptation_start(project=project, user=None)
        assert not created and again == job  # a second trigger joins the first
        version = adaptation_run(job_id=job.id)  # the train queue's task runs either kind
    job.refresh_from_db()
    version.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert (version.model, version.method, version.number, version.parent) == (
        "litemedsam",
        "decoder",
        2,
        None,
    )
    assert version.base_sha256 == file_sha256(litemedsam_weights_path())
    assert set(version.validation) == {f"case-{c.id}" for c in hippo_crops.cases["validation"]}
    curves = version.gate["interactive"]
    assert len(curves["candidate"]) == 6 and len(curves["active"]) == 6  # vs the bundled LiteMedSAM
    assert (
        curves["rival"]["number"] == 1 and len(curves["rival"]["curve"]) == 6
    )  # the native v1, same prompts
    # after a box, the adapted decoder beats the bundled one on both validation cases
    assert version.gate["promotable"], version.gate["reason"]
    assert version.gate["mean_delta"] > 0 and version.state == ModelVersion.State.ACTIVE
    native.refresh_from_db()
    assert native.state == ModelVersion.State.ACTIVE  # one active version per network
    assert active_version(project) == native  # the native net still pre-segments and scores
    assert not Job.objects.filter(project=project, kind=Job.Kind.SCORE).exists()  # nothing to re-score
    assert sam_adaptation_run(job_id=job.id) == version  # the message delivered again changes nothing

    # routing: the better of the two on the curve they were both scored on
    better = sum(curves["candidate"]) > sum(curves["rival"]["curve"])
    assert interactive_route(project=project).model == ("litemedsam" if better else "native3d")


def litemedsam_version(project, number: int, content: bytes) -> ModelVersion:
    """An active LiteMedSAM version whose weights file holds `content`."""
    weights = media_path(f"models/project-{project.id}/sam-v{number}.pt")
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(content)
    version = model_version(project, number, state="candidate", gate={"promotable": True, "reason": "test"})
    ModelVersion.objects.filter(pk=version.pk).update(
        model="litemedsam", weights_path=media_relative(weights), weights_sha256=file_sha256(weights)
    )
    return model_promote(version=ModelVersion.objects.get(pk=version.pk), user=None)


def test_a_litemedsam_version_answers_boxes_and_a_damaged_one_says_so(disc_project):
    from annotation.services import interactive_segment

    project = disc_project.project
    v1 = litemedsam_version(project, 1, litemedsam_weights_path().read_bytes())
    route = interactive_route(project=project)  # no native net: the adapted LiteMedSAM answers
    assert (route.model, route.number, route.sha256) == ("litemedsam", 1, v1.weights_sha256)
    case = disc_project.cases["validation"][0]
    request = {"label": 1, "box": {"lo": [6, 6, 1], "hi": [26, 26, 2]}}
    answer = interactive_segment(volume_id=case.volume_id, request=request, route=route.as_message())
    assert answer["model"] == f"litemedsam/{v1.weights_sha256[:16]}" and answer["model_version"] == 1

    litemedsam_version(project, 2, b"damaged")  # promoted: v1 retires
    route = interactive_route(project=project)
    failed = interactive_segment(volume_id=case.volume_id, request=request, route=route.as_message())
    assert "The project's LiteMedSAM (version 2) cannot be loaded" in failed["error"]


def test_a_damaged_litemedsam_version_fails_the_next_round_clearly(disc_project):
    project = disc_project.project
    broken = model_version(project, 1, state="active", gate={"promotable": True, "reason": "test"})
    ModelVersion.objects.filter(pk=broken.pk).update(model="litemedsam")
    media_path(broken.weights_path).parent.mkdir(parents=True, exist_ok=True)
    media_path(broken.weights_path).write_bytes(b"truncated")
    job, _ = sam_adaptation_start(project=project, user=None)
    assert sam_adaptation_run(job_id=job.id) is None
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "the active LiteMedSAM version cannot be loaded" in job.error
    assert ModelVersion.objects.filter(project=project).count() == 1  # nothing recorded


def _curve(mean: float) -> list[float]:
    return [mean] * 6


def _vs(mean: float, native: float, number: int = 1) -> dict:
    """A LiteMedSAM version's gate curves: its own mean, and the native version `number`'s beside it."""
    return {
        "candidate": _curve(mean),
        "rival": {"model": "native3d", "number": number, "curve": _curve(native)},
    }


@pytest.mark.parametrize(
    ("native", "sam", "routed"),
    [
        (None, None, None),  # nothing adapted: the bundled LiteMedSAM
        ({}, None, "native3d"),  # no LiteMedSAM version: as before
        (None, {"candidate": _curve(0.7)}, "litemedsam"),  # no native net to compare with
        ({}, _vs(0.8, 0.7), "litemedsam"),
        ({}, _vs(0.7, 0.8), "native3d"),
        ({}, _vs(0.7, 0.7), "native3d"),  # a tie: the native net (it edits the mask)
        ({}, _vs(0.9, 0.1, number=7), "native3d"),  # against a native version no longer active
        ({}, {"candidate": _curve(0.9)}, "native3d"),  # never measured beside the native net
    ],
)  # fmt: skip
def test_boxes_and_clicks_go_to_the_model_better_on_the_interactive_curve(project, native, sam, routed):
    if native is not None:
        model_version(project, 1, state="active", gate={"promotable": True, "reason": "test"})
    if sam is not None:
        version = model_version(project, 2, state="candidate", gate={"promotable": True, "interactive": sam})
        ModelVersion.objects.filter(pk=version.pk).update(model="litemedsam")
        model_promote(version=ModelVersion.objects.get(pk=version.pk), user=None)
    route = interactive_route(project=project)
    assert (None if route is None else route.model) == routed
    if routed is not None:
        assert route.number == (2 if routed == "litemedsam" else 1)


@pytest.mark.timeout(900)  # 12 encoder passes on a busy 2-core CPU
def test_ranking_by_disagreement_asks_litemedsam_on_the_native_boxes_and_presegments_with_the_better(
    disc_project, make_volume, django_capture_on_commit_callbacks
):
    from annotation.models import MaskVersion
    from learning.services import learning_tick, pool_score_run, pool_score_start

    project = disc_project.project
    native = native_version(project, 1)
    # A native net that calls every voxel the first structure: its box is the whole volume.
    network, config = load_native3d(media_path(native.weights_path))
    last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([8.0, -8.0]))
    save_native3d(network, config, media_path(native.weights_path))
    ModelVersion.objects.filter(pk=native.pk).update(
        weights_sha256=file_sha256(media_path(native.weights_path))
    )
    pool = []
    for seed in (10, 11):
        volume = make_volume(array=disc(seed)[0], affine=np.eye(4))
        project_volumes_add(project=project, volumes=[volume], user=None)
        pool.append(Case.objects.get(project=project, volume=volume))

    job, _ = pool_score_start(project=project)  # the default strategy (hybrid) reads entropy only
    assert pool_score_run(job_id=job.id) == 2
    job.refresh_from_db()
    assert "presegmentation" not in job.result
    assert all(
        "disagreement" not in c.score_inputs["scores"]
        for c in Case.objects.filter(pk__in=[c.pk for c in pool])
    )

    with django_capture_on_commit_callbacks(execute=False):
        assert learning_tick()["score"] == []  # scored with the active model: nothing stale
        small_policy(project, epochs=1, steps=20, alpha=0.5, margin=0.0, strategy="disagreement")
        (queued,) = learning_tick()["score"]  # the pool lacks the score the new strategy reads
    assert pool_score_run(job_id=queued) == 2
    job = Job.objects.get(pk=queued)
    choice = job.result["presegmentation"]
    assert choice["cases"] == 2 and 0.0 <= choice["model"] <= 1.0 and 0.0 <= choice["second"] <= 1.0
    assert "validation cases: native net" in job.log
    assert job.result["scored_now"] == 2  # the stored entropy-only scores could not serve this strategy
    for case in Case.objects.filter(pk__in=[c.pk for c in pool]):
        assert 0.0 <= case.score_inputs["scores"]["disagreement"] <= 1.0
        assert case.score_reason.startswith("disagreement")
        head = MaskVersion.objects.filter(case=case).order_by("-number").first()
        assert head.model_version == (
            native.second_opinion_label if choice["use"] == "second" else native.label
        )
