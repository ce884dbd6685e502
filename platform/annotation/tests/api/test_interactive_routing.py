"""Boxes and clicks go to the project's best model: its active version once there is one (a native 3D
net that edits the annotator's mask and honours every click), LiteMedSAM before; a promotion or a
rollback reroutes the next click, and the worker keeps each version it loaded warm."""

from __future__ import annotations

import hashlib

import pytest
import torch
from django.test import Client

from annotation import interactive
from annotation.tests.api.test_interactive import BOX, decode, interact, start
from annotator.celery import app
from common.media import media_path
from learning.models import ModelVersion
from learning.selectors import interactive_route
from learning.services import model_promote, model_rollback
from ml_worker.models.native3d import Native3DConfig, save_native3d

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = Native3DConfig(
    num_classes=2, class_names=("anterior", "posterior"), init_filters=8, roi_size=(16, 16, 16), spacing=None
)


def version(project, number: int, *, state: str, seed: int) -> ModelVersion:
    """A model version whose merged weights are a small native 3D net written in the media store."""
    torch.manual_seed(seed)
    relative = f"models/{project.id}/v{number}.pt"
    path = save_native3d(CONFIG.build(), CONFIG, media_path(relative))
    return ModelVersion.objects.create(
        project=project,
        number=number,
        state=state,
        method="full",
        base_path=relative,
        base_sha256="0" * 64,
        adapter_path="",
        adapter_sha256="",
        weights_path=relative,
        weights_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        gate={"promotable": True, "reason": "test"},
    )


def test_without_an_active_version_litemedsam_answers(project):
    assert interactive_route(project=project) is None
    version(project, 1, state="candidate", seed=0)
    assert interactive_route(project=project) is None  # a candidate is not what annotators get


def test_boxes_and_clicks_go_to_the_active_version_and_follow_promotion_and_rollback(
    users, project, case, settings
):
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120
    v1 = version(project, 1, state="candidate", seed=1)
    model_promote(version=v1, user=users["admin"])
    v2 = version(project, 2, state="candidate", seed=2)
    holder = Client()
    holder.force_login(users["annotator"])
    assert holder.post(f"/api/cases/{case.id}/take/").status_code == 200
    negative = {"ijk": [3, 2, 1], "positive": False}
    positive = {"ijk": [6, 4, 3], "positive": True}  # outside the box: the guarantee still holds
    app.control.purge()
    with start(["interactive"]):
        first = interact(holder, case, BOX)
        assert first.status_code == 200, first.json()
        body = first.json()
        assert body["model"] == f"native3d/{v1.weights_sha256[:16]}" and body["model_version"] == 1
        assert not body["incremental"] and not body["pending"]

        clicked = interact(holder, case, {**BOX, "clicks": [negative, positive]})
        assert clicked.status_code == 200, clicked.json()
        mask = decode(clicked.json()["mask"])
        assert mask[3, 2, 1] == 0 and mask[6, 4, 3] == 1  # every click on its side
        again = interact(holder, case, {**BOX, "clicks": [negative, positive, {"ijk": [2, 2, 2]}]})
        assert again.json()["incremental"]  # the warm session ran only the new click

        model_promote(version=v2, user=users["admin"])
        after_promotion = interact(holder, case, BOX).json()
        assert after_promotion["model_version"] == 2
        assert after_promotion["model"] == f"native3d/{v2.weights_sha256[:16]}"

        model_rollback(version=ModelVersion.objects.get(pk=v1.pk), user=users["admin"])
        after_rollback = interact(holder, case, BOX).json()
        assert after_rollback["model_version"] == 1
        segmenter = interactive.native_segmenter()  # the thread-pool worker shares this process
        assert segmenter.loaded(v1.weights_sha256) and segmenter.loaded(v2.weights_sha256)


def test_a_version_whose_weights_cannot_be_read_is_a_clear_error(users, project, case, settings):
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120
    v1 = version(project, 1, state="candidate", seed=1)
    model_promote(version=v1, user=users["admin"])
    media_path(v1.weights_path).write_bytes(b"truncated")
    ModelVersion.objects.filter(pk=v1.pk).update(weights_sha256="f" * 64)  # not a model loaded before
    holder = Client()
    holder.force_login(users["annotator"])
    assert holder.post(f"/api/cases/{case.id}/take/").status_code == 200
    app.control.purge()
    with start(["interactive"]):
        answer = interact(holder, case, BOX)
    assert answer.status_code == 400
    assert "version 1" in answer.json()["message"] and "cannot be loaded" in answer.json()["message"]
