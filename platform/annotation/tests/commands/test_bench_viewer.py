"""bench_viewer --checkpoint: the bench project answers its boxes and clicks with the given native
weights, made its active model version through the learning services."""

from __future__ import annotations

import pytest

from annotation.management.commands.bench_viewer import bench_model_activate
from common.media import media_path
from learning.models import ModelVersion
from learning.selectors import interactive_route
from ml_worker.models.checkpoints import file_sha256

pytestmark = pytest.mark.django_db


def test_the_checkpoint_becomes_the_active_version_that_clicks_route_to(project, tmp_path):
    checkpoint = tmp_path / "native_clicks.pt"
    checkpoint.write_bytes(b"native 3D weights")

    version = bench_model_activate(project=project, checkpoint=checkpoint)

    assert version.state == ModelVersion.State.ACTIVE and version.number == 1
    assert version.job.params["base_checkpoint"] == str(checkpoint)
    route = interactive_route(project=project)
    assert route is not None and route.version_id == version.id
    assert route.sha256 == file_sha256(checkpoint)
    assert media_path(route.weights).read_bytes() == checkpoint.read_bytes()  # a copy in the media store
