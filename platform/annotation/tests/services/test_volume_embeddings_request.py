"""One embeddings task per volume, never a queue of duplicates; embeddings ahead for the top of the
worklist. Messages counted in the real Redis broker (no worker consumes the gpu queue here)."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.interactive import embeddings_dir
from annotation.models import Case
from annotation.services import (
    CaseScore,
    case_scores_set,
    case_take,
    project_volumes_add,
    volume_embeddings_compute,
    volume_embeddings_request,
)
from annotation.tests.helpers import SHAPE
from annotator.celery import app
from ml_worker.inference.slice_store import request_claimed

pytestmark = pytest.mark.django_db(transaction=True)


def _drop_gpu_queue() -> None:
    # purge() empties only the queues this process consumes; earlier tests may leave gpu messages
    with app.connection_for_write() as connection:
        connection.default_channel.client.delete("gpu")


@pytest.fixture(autouse=True)
def _empty_queues():
    app.control.purge()
    _drop_gpu_queue()
    yield
    app.control.purge()
    _drop_gpu_queue()


def queued(queue: str = "gpu") -> int:
    with app.connection_for_write() as connection:
        return connection.default_channel.client.llen(queue)


def test_asking_again_while_a_task_is_queued_queues_nothing(case):
    volume_embeddings_request(volumes=[case.volume])
    volume_embeddings_request(volumes=[case.volume, case.volume])
    assert queued() == 1 and request_claimed(embeddings_dir(), case.volume.sha256)


def test_a_finished_task_lets_the_next_request_queue_again(case, monkeypatch):
    from annotation import interactive

    class Segmenter:
        def embed(self, path, sha256, progress=None):
            progress(1, 4)
            return True

    monkeypatch.setattr(interactive, "segmenter", lambda: Segmenter())
    volume_embeddings_request(volumes=[case.volume])
    assert volume_embeddings_compute(volume_id=case.volume_id) is True
    assert not request_claimed(embeddings_dir(), case.volume.sha256)  # released when it ended
    volume_embeddings_request(volumes=[case.volume])
    assert queued() == 2


def test_a_lost_task_is_queued_again_once_its_claim_is_stale(case, settings):
    volume_embeddings_request(volumes=[case.volume])
    settings.EMBEDDINGS_CLAIM_STALE_SECONDS = -1  # as if nobody had heard of the task for too long
    volume_embeddings_request(volumes=[case.volume])
    assert queued() == 2


def test_taking_a_case_prepares_it_and_the_next_ones_of_the_worklist(users, project, make_volume, settings):
    settings.INTERACTIVE_PREFETCH_CASES = 2
    ramps = [np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) + i for i in range(4)]  # 4 volumes
    project_volumes_add(project=project, volumes=[make_volume(array=a) for a in ramps], user=None)
    cases = list(Case.objects.filter(project=project).order_by("id"))
    scores = [CaseScore(case_id=c.id, score=float(s)) for c, s in zip(cases, (4, 3, 2, 1), strict=True)]
    case_scores_set(project=project, scores=scores, model="m", version="1")
    assert queued() == 2  # re-ranked: the top two are prepared ahead
    assert all(request_claimed(embeddings_dir(), c.volume.sha256) for c in cases[:2])
    case_take(case=cases[0], user=users["annotator"])
    assert queued() == 3  # the taken one was queued already; the next two now are cases 1 and 2
    assert request_claimed(embeddings_dir(), cases[2].volume.sha256)
    assert not request_claimed(embeddings_dir(), cases[3].volume.sha256)
    case_take(case=cases[0], user=users["annotator"])  # taken again (a reload): nothing new
    assert queued() == 3


def test_no_embeddings_once_the_projects_native_net_answers_its_clicks(users, project, make_volume, settings):
    from annotation.tests.api.test_interactive_routing import version

    settings.INTERACTIVE_PREFETCH_CASES = 2
    ramps = [np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) + i for i in range(3)]
    project_volumes_add(project=project, volumes=[make_volume(array=a) for a in ramps], user=None)
    version(project, 1, state="active", seed=0)  # LiteMedSAM no longer answers this project
    cases = list(Case.objects.filter(project=project).order_by("id"))
    case_scores_set(
        project=project, scores=[CaseScore(case_id=c.id, score=1.0) for c in cases], model="m", version="1"
    )
    case_take(case=cases[0], user=users["annotator"])
    assert queued() == 0 and not request_claimed(embeddings_dir(), cases[0].volume.sha256)
