"""The loop with real Celery worker processes on the real Redis broker and PostgreSQL: approvals start a
round by themselves, a worker killed mid-round loses nothing (another takes the job over and resumes
from the epoch checkpoint; no half-written model ever becomes active), the same message delivered
twice gives one model, the pool is re-scored after the promotion, and queued work survives a broker
that lost its queues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.db import connection

from annotation.models import Case, MaskVersion
from annotator.celery import app
from learning import services, tasks
from learning.models import Job, ModelVersion
from learning.tests.conftest import small_policy

REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def start_worker(settings):
    """start_worker(queues) -> the worker's Popen (a real `celery worker`, prefork, one child)."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "annotator.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "JOB_LEASE_SECONDS": str(settings.JOB_LEASE_SECONDS),
        "OMP_NUM_THREADS": "1",
    }
    started: list[subprocess.Popen] = []
    app.control.purge()

    def start(queues: str) -> subprocess.Popen:
        log = open(Path(settings.MEDIA_ROOT).parent / f"worker-{len(started)}.log", "w")  # noqa: SIM115
        command = [
            sys.executable, "-m", "celery", "-A", "annotator", "worker", "-Q", queues,
            "--pool", "prefork", "-c", "1", "-l", "info", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, cwd=REPO / "platform", env=env, start_new_session=True, stdout=log, stderr=log
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    app.control.purge()


def wait_for(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_approvals_start_a_round_that_survives_a_killed_worker_and_rescores_the_pool(
    hippo_project, start_worker, settings
):
    hp = hippo_project(train=5, validation=5, pool=3)
    small_policy(hp.project, epochs=3, steps=6)
    for case in hp.cases["train"] + hp.cases["validation"]:
        hp.approve(case)
    app.control.purge()  # what taking and approving queued (embeddings, SEG export): not this test's work
    worker = start_worker("train,gpu,cpu")

    out = services.learning_tick()  # what beat runs: 10 approved >= 5 -> a round starts by itself
    job = Job.objects.get(pk=out["adapt"][0])
    checkpoint = Path(settings.MEDIA_ROOT) / f"models/project-{hp.project.id}/job-{job.id}/checkpoint"
    # Kill the worker's child once the first epoch's checkpoint exists, mid-way through the second.
    wait_for(lambda: checkpoint.exists() and any(checkpoint.iterdir()), timeout=240, what="epoch 1")
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and not ModelVersion.objects.exists()
    os.kill(int(job.worker.rpartition(":")[2]), signal.SIGKILL)

    # The parent worker re-queues the message; its new child sees the dead holder and takes over.
    wait_for(lambda: Job.objects.get(pk=job.pk).finished, timeout=300, what="the round to finish")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, (job.error, job.log)
    assert job.attempts == 2 and "was lost" in job.log
    version = ModelVersion.objects.get(project=hp.project)
    assert version.job == job and version.validation_dice is not None and len(version.validation) == 5
    assert version.state == ModelVersion.State.ACTIVE  # floor 0 for the first model: the gate passes
    epochs = [h["epoch"] for h in version.history]
    assert epochs == [1, 2, 3]  # resumed after epoch 1: no epoch run twice in the record

    # The same message delivered twice: one model.
    tasks.adaptation_run.delay(job.id).get(timeout=60)
    assert ModelVersion.objects.filter(project=hp.project).count() == 1

    # The promotion re-scored the pool on the gpu queue: pre-segmented by the new model and ranked.
    # (a cold-start scoring the tick queued beside the round may finish first, or be joined by it)
    score = wait_for(
        lambda: Job.objects.filter(
            kind=Job.Kind.SCORE, state=Job.State.SUCCEEDED, result__model=version.label
        ).first(),
        timeout=120,
        what="the pool to be re-scored",
    )
    assert score.result == {"ranked": 3, "scored_now": 3, "model": version.label}
    pool = Case.objects.filter(project=hp.project, status=Case.Status.NEW)
    assert {c.score_model for c in pool} == {version.label}
    assert MaskVersion.objects.filter(case__in=pool, model_version=version.label).count() == 3
    assert worker.poll() is None


def test_queued_work_survives_a_broker_that_lost_its_queues(hippo_project, start_worker, settings):
    hp = hippo_project(train=0, validation=0, pool=3)
    job, _ = services.pool_score_start(project=hp.project)  # dispatched at once: no worker yet
    assert Job.objects.get(pk=job.pk).dispatched_at is not None
    # A Redis without persistence restarting loses every queued message: drop our keys as it would.
    # A plain client: kombu's own adds its key prefix to every command, so it would not find them.
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    assert client.exists(f"{prefix}gpu"), "the job's message should be in the broker before the 'restart'"
    client.delete(*client.keys(f"{prefix}*"))
    assert client.keys(f"{prefix}*") == []
    start_worker("gpu")
    time.sleep(3)
    assert Job.objects.get(pk=job.pk).state == Job.State.QUEUED  # nothing arrived: the message is gone

    settings.JOB_REDISPATCH_SECONDS = 0  # beat's recovery: queued too long without a worker taking it
    assert services.jobs_recover()["resent"] == [job.id]
    wait_for(lambda: Job.objects.get(pk=job.pk).finished, timeout=120, what="the re-sent job")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.result["ranked"] == 3
