"""Model-assisted editing over HTTP with real Celery workers on the real Redis broker: the embeddings
task (queue gpu), the click (queue interactive) answered by a warm worker, and every way it can fail."""

from __future__ import annotations

import base64
import gzip
import json
import time

import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from django.test import Client

from annotation.interactive import answers_dir, embeddings_dir
from annotation.models import MaskVersion
from annotation.services import volume_embeddings_compute
from annotation.tests.helpers import SHAPE
from annotator.celery import app
from ml_worker.inference.embeddings import EmbeddingCache
from ml_worker.inference.interactive import embeddings_key

pytestmark = pytest.mark.django_db(transaction=True)

BOX = {"label": 1, "box": {"lo": [1, 1, 0], "hi": [6, 4, 3]}}


def start(queues: list[str]):
    return start_worker(
        app, pool="threads", concurrency=1, queues=queues, perform_ping_check=False, shutdown_timeout=120
    )


@pytest.fixture
def worker_for(request):
    """A worker on the given queues (one per test: Celery's test worker keeps process-wide state)."""
    app.control.purge()
    with start(request.param):
        yield


@pytest.fixture
def holder(users, case) -> Client:
    client = Client()
    client.force_login(users["annotator"])
    assert client.post(f"/api/cases/{case.id}/take/").status_code == 200
    return client


def interact(client: Client, case, body: dict):
    return client.post(
        f"/api/cases/{case.id}/interactive/", json.dumps(body), content_type="application/json"
    )


def decode(mask: str) -> np.ndarray:
    flat = np.frombuffer(gzip.decompress(base64.b64decode(mask)), np.uint8)
    return flat.reshape(SHAPE, order="F")


@pytest.mark.parametrize("worker_for", [["gpu"]], indirect=True)
def test_taking_a_case_has_the_gpu_worker_compute_its_embeddings(worker_for, holder, case):
    stored = EmbeddingCache(max_bytes=0, directory=embeddings_dir())
    deadline = time.monotonic() + 300
    while embeddings_key(case.volume.sha256) not in stored and time.monotonic() < deadline:
        time.sleep(0.5)
    assert embeddings_key(case.volume.sha256) in stored


@pytest.mark.parametrize("worker_for", [["interactive"]], indirect=True)
def test_box_then_click_through_the_interactive_worker(worker_for, users, case, settings):
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120  # the first call loads the model, on a machine maybe busy
    volume_embeddings_compute(volume_id=case.volume_id)  # what the gpu worker does (test above)
    holder = Client()
    holder.force_login(users["annotator"])
    assert holder.post(f"/api/cases/{case.id}/take/").status_code == 200
    first = interact(holder, case, BOX)
    assert first.status_code == 200, first.json()
    body = first.json()
    mask = decode(body["mask"])
    assert body["label"] == 1 and not body["incremental"] and set(np.unique(mask)) <= {0, 1}
    assert not body["pending"] and body["slices_ready"] == body["slices_total"] == 4
    outside = mask.astype(bool).copy()
    outside[1:7, 1:5, 0:4] = False
    assert not outside.any()  # nothing outside the box
    click = {**BOX, "clicks": [{"ijk": [3, 2, 1], "positive": True}]}
    second = interact(holder, case, click)
    assert second.status_code == 200 and second.json()["incremental"]
    assert not any(answers_dir().iterdir())  # each answer file is read once and removed
    assert not MaskVersion.objects.exists()  # a model call saves nothing: the annotator saves


def queued(queue: str) -> int:
    with app.connection_for_write() as connection:  # waiting in Redis for a worker
        return connection.default_channel.client.llen(queue)


@pytest.mark.parametrize("worker_for", [["interactive"]], indirect=True)
def test_a_first_box_on_a_fresh_volume_is_answered_at_once_and_grows_as_slices_arrive(
    worker_for, holder, case, settings
):
    settings.INTERACTIVE_TIMEOUT_SECONDS = 120  # the first call loads the model, on a machine maybe busy
    waiting = queued("gpu")
    assert waiting >= 1  # taking the case queued its embeddings (no gpu worker here: they wait)
    first = interact(holder, case, BOX)  # box over k = 0..3: its middle slice, k = 1, is encoded first
    assert first.status_code == 200, first.json()
    body = first.json()
    assert body["pending"] and (body["slices_ready"], body["slices_total"]) == (1, 4)
    assert set(np.flatnonzero(decode(body["mask"]).any(axis=(0, 1)))) <= {1}
    again = interact(holder, case, BOX)  # what the page does while it waits: no second task queued
    assert again.status_code == 200 and again.json()["pending"] and queued("gpu") == waiting
    assert volume_embeddings_compute(volume_id=case.volume_id)  # what the gpu worker does with it
    done = interact(holder, case, BOX).json()
    assert not done["pending"] and done["slices_ready"] == done["slices_total"] == 4
    assert done["incremental"]  # the warm session grew over the new slices


def test_no_interactive_worker_is_504(holder, case, settings):
    settings.INTERACTIVE_TIMEOUT_SECONDS = 1
    app.control.purge()
    refused = interact(holder, case, BOX)
    assert refused.status_code == 504 and "No model worker answered within 1" in refused.json()["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"label": 7, "box": BOX["box"]}, "Class 7 is not in this project's label set [1, 2]"),
        ({**BOX, "clicks": [{"ijk": [8, 0, 0]}]}, "outside the volume of 8x6x4 voxels"),
        ({"label": 1, "box": {"lo": [5, 1, 0], "hi": [2, 4, 3]}}, "box"),
        ({"label": 1}, "The request is not valid."),
    ],
)
def test_bad_prompts_are_400(holder, case, body, message):
    refused = interact(holder, case, body)
    assert refused.status_code == 400 and message in refused.json()["message"], refused.json()


def test_only_the_holder_may_call_the_model(users, case, holder):
    other = Client()
    other.force_login(users["annotator2"])
    refused = interact(other, case, BOX)
    assert refused.status_code == 423 and "annotator holds this case" in refused.json()["message"]


def test_model_tasks_go_to_their_queues():
    for task, queue in (
        ("annotation.tasks.case_interactive_segment", "interactive"),
        ("annotation.tasks.volume_embeddings_compute", "gpu"),
        ("annotation.tasks.review_seg_export", "cpu"),
    ):
        assert app.amqp.router.route({}, task)["queue"].name == queue
