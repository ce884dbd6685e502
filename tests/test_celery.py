"""A real Celery worker on the real Redis broker runs the PACS sync and the ingest it fans out."""

from __future__ import annotations

import time

import pytest
from celery.contrib.testing.worker import start_worker

from annotator.celery import app
from pacs.tasks import pacs_source_sync
from studies.models import Series


@pytest.fixture
def worker(transactional_db):
    app.control.purge()
    with start_worker(app, pool="threads", concurrency=2, queues=["cpu"], perform_ping_check=False):
        yield


def test_sync_task_fans_out_ingest_to_the_worker(worker, pacs_source):
    pacs_source_sync.delay(pacs_source.id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pending = Series.objects.exclude(status__in=[Series.Status.READY, Series.Status.SKIPPED])
        if Series.objects.exists() and not pending.exists():
            break
        time.sleep(0.5)
    assert Series.objects.filter(status=Series.Status.READY).count() > 10
    assert not Series.objects.exclude(status__in=[Series.Status.READY, Series.Status.SKIPPED]).exists()


@pytest.mark.parametrize(
    "task", ["pacs.tasks.pacs_source_sync", "pacs.tasks.series_ingest", "pacs.tasks.pacs_sources_poll"]
)
def test_pacs_tasks_go_to_the_cpu_queue(task):
    route = app.amqp.router.route({}, task)
    assert route["queue"].name == "cpu" and route["queue"].routing_key == "cpu"


def test_every_queue_has_its_own_exchange_and_key():
    queues = {q.name: q for q in app.conf.task_queues}
    assert set(queues) == {"interactive", "gpu", "train", "cpu"}
    assert all(q.routing_key == name and q.exchange.name == name for name, q in queues.items())
