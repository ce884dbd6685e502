"""manage.py interactive_eval: the simulated annotator on what the project's clicks are routed to."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from django.core.management import CommandError, call_command

from common.media import media_path
from learning.models import ModelVersion
from ml_worker.adaptation.tests.synthetic import make_case
from ml_worker.models.native3d import Native3DConfig, save_native3d

pytestmark = pytest.mark.django_db

CONFIG = Native3DConfig(
    num_classes=2, class_names=("anterior", "posterior"), init_filters=8, roi_size=(24, 24, 24), spacing=None
)


def test_it_evaluates_the_active_version(project, tmp_path):
    make_case(tmp_path / "data", "case0", seed=0)
    torch.manual_seed(0)
    path = save_native3d(CONFIG.build(), CONFIG, media_path("models/v1.pt"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ModelVersion.objects.create(
        project=project, number=1, state="active", method="full", base_path="models/v1.pt",
        base_sha256=sha, adapter_path="", adapter_sha256="", weights_path="models/v1.pt", weights_sha256=sha,
    )  # fmt: skip
    out = tmp_path / "report.json"
    call_command(
        "interactive_eval", "--project", project.name, "--", "--images", str(tmp_path / "data/images"),
        "--labels", str(tmp_path / "data/labels"), "--clicks", "2", "--out", str(out), "--threads", "1",
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["model"] == f"native3d/{sha[:16]}"
    summary = report["summary"]["classes"]
    assert set(summary) == {"label_1", "label_2"}
    for name in summary:
        assert len(summary[name]["dice_per_step"]) == 3
        assert summary[name]["clicked_voxels_on_clicked_side"] in (None, 1.0)  # the click guarantee
        assert 0 <= summary[name]["noc90"]["median"] <= 2


def test_the_model_comes_from_the_routing(project, tmp_path):
    with pytest.raises(CommandError, match="come from the project's routing"):
        call_command("interactive_eval", "--project", project.name, "--", "--model", "native3d")
