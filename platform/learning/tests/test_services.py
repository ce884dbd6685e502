"""The learning loop's services on real hippocampus volumes and the real PostgreSQL: rounds, the gate's
say over promotion, the registry's one active model, rollback, jobs that are joined, cancelled, claimed
once, recovered; pool pre-segmentation and scoring. Training is a few steps on the CPU."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.masks import mask_read
from annotation.models import Case, MaskVersion
from common.exceptions import ApplicationError
from common.media import media_path
from learning import services
from learning.models import Job, ModelVersion
from learning.services import (
    adaptation_run,
    adaptation_start,
    job_cancel,
    learning_tick,
    model_promote,
    model_rollback,
    pool_score_run,
    pool_score_start,
)
from learning.tests.conftest import hippocampus, small_policy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _small(settings):
    torch.set_num_threads(1)  # two threads on a shared 2-core machine run slower, not faster


def approved_project(hippo_project, *, train=5, validation=5, pool=3):
    hp = hippo_project(train=train, validation=validation, pool=pool)
    small_policy(hp.project)
    for case in hp.cases.get("train", []) + hp.cases.get("validation", []):
        hp.approve(case)
    return hp


def run_round(project, user=None, **kwargs) -> ModelVersion | None:
    job, created = adaptation_start(project=project, user=user, **kwargs)
    assert created
    return adaptation_run(job_id=job.id)


def test_a_round_trains_judges_and_promotes_the_first_model_then_the_pool_is_rescored(
    hippo_project, make_volume, django_capture_on_commit_callbacks
):
    hp = approved_project(hippo_project)
    project = hp.project
    with django_capture_on_commit_callbacks(execute=True):
        version = run_round(project)
    version.refresh_from_db()
    job = version.job
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.progress == 100
    assert (version.number, version.method, version.parent) == (1, "full", None)  # from an initialisation
    assert set(version.validation) == {f"case-{c.id}" for c in hp.cases["validation"]}
    assert 0.0 <= version.validation_dice <= 1
    assert version.gate["promotable"] and "first model" in version.gate["reason"]
    assert version.state == ModelVersion.State.ACTIVE  # the gate passed; promotion is automatic
    assert len(version.snapshot) == 10
    for field in ("adapter_path", "weights_path"):
        assert Path(services.media_path(getattr(version, field))).is_file()
    # The promotion asked for a re-score of the pool.
    score_job = Job.objects.get(project=project, kind=Job.Kind.SCORE)

    assert pool_score_run(job_id=score_job.id) == 3
    for case in hp.cases["pool"]:
        case.refresh_from_db()
        v0 = case.versions.get()
        assert (v0.source, v0.model_version) == (MaskVersion.Source.MODEL, version.label)
        assert mask_read(v0.path).shape == hp.truth[case.id].shape
        assert case.score_model == version.label and case.score_reason
    scores = sorted(c.score for c in Case.objects.filter(project=project, status=Case.Status.NEW))
    assert scores == [1.0, 2.0, 3.0]  # the worklist order is the strategy's ranking
    worked_on = Case.objects.filter(project=project).exclude(status=Case.Status.NEW)
    assert {(c.score, c.score_reason) for c in worked_on} == {(0.0, "not in the pool: worked on")}

    # A new volume arrives: only it is run through the model; the others' stored scores are reused.
    from annotation.services import project_volumes_add

    image, _, affine = hippocampus(106)
    project_volumes_add(project=project, volumes=[make_volume(array=image, affine=affine)], user=None)
    again, _ = pool_score_start(project=project)
    assert pool_score_run(job_id=again.id) == 4
    again.refresh_from_db()
    assert again.result == {"ranked": 4, "scored_now": 1, "model": version.label}
    assert MaskVersion.objects.filter(case__project=project, model_version=version.label).count() == 4
    # Running the delivered message again changes nothing.
    assert adaptation_run(job_id=job.id) == version
    assert ModelVersion.objects.filter(project=project).count() == 1


def test_a_worse_candidate_stays_a_candidate_and_cannot_be_promoted(hippo_project):
    hp = approved_project(hippo_project)
    first = run_round(hp.project)
    # A round whose training is all but nothing (lr near zero on a LoRA): no significant gain.
    small_policy(hp.project, epochs=1, steps_per_epoch=1, method="lora_conv", lr=1e-9)
    second = run_round(hp.project)
    first.refresh_from_db()
    assert (second.parent, second.method, second.base_sha256) == (first, "lora_conv", first.weights_sha256)
    assert second.state == ModelVersion.State.CANDIDATE and first.state == ModelVersion.State.ACTIVE
    assert not second.gate["promotable"] and second.gate["reason"].startswith("not promotable")
    assert second.gate["n"] == 5 and second.gate["active_mean"] == pytest.approx(first.validation_dice)
    with pytest.raises(ApplicationError, match="did not pass the validation gate"):
        model_promote(version=second, user=hp.users["admin"])
    assert services.active_version(hp.project) == first


def test_manual_promotion_waits_for_the_admin_and_rollback_is_one_action(hippo_project):
    hp = approved_project(hippo_project)
    small_policy(hp.project, manual_promotion=True)
    first = run_round(hp.project)
    assert first.state == ModelVersion.State.CANDIDATE and first.gate["promotable"]
    first.job.refresh_from_db()
    assert first.job.result["outcome"].startswith("candidate (waits")
    model_promote(version=first, user=hp.users["admin"])
    # A second version, promoted by hand (the gate verdict is the row's: set here to isolate the registry).
    second = run_round(hp.project)
    ModelVersion.objects.filter(pk=second.pk).update(gate={"promotable": True, "reason": "test"})
    second.refresh_from_db()
    model_promote(version=second, user=hp.users["admin"])
    first.refresh_from_db()
    assert first.state == ModelVersion.State.RETIRED

    model_rollback(version=first, user=hp.users["admin"])
    states = dict(ModelVersion.objects.filter(project=hp.project).values_list("number", "state"))
    assert states == {1: "active", 2: "retired"}
    with pytest.raises(ApplicationError, match="active model already"):
        model_rollback(version=ModelVersion.objects.get(number=1, project=hp.project), user=hp.users["admin"])
    third = run_round(hp.project)
    with pytest.raises(ApplicationError, match="was never active"):
        model_rollback(version=third, user=hp.users["admin"])
    # The database itself refuses a second active model.
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=third.pk).update(state="active")


def test_a_bad_base_checkpoint_fails_the_job_clearly_and_leaves_the_active_model(hippo_project, tmp_path):
    hp = approved_project(hippo_project)
    first = run_round(hp.project)
    bad = tmp_path / "site_model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    job, _ = adaptation_start(project=hp.project, user=hp.users["admin"], base_checkpoint=str(bad))
    assert adaptation_run(job_id=job.id) is None
    job.refresh_from_db()
    assert job.state == Job.State.FAILED and str(bad) in job.error and "internal" not in job.error
    assert services.active_version(hp.project) == first
    assert ModelVersion.objects.filter(project=hp.project).count() == 1

    missing = adaptation_start(project=hp.project, user=None, base_checkpoint=str(tmp_path / "nope.pt"))[0]
    adaptation_run(job_id=missing.id)
    missing.refresh_from_db()
    assert missing.state == Job.State.FAILED and "does not exist" in missing.error


def _pretraining_file(path: Path, *, init_filters: int) -> dict[str, torch.Tensor]:
    """A file as ``python -m ml_worker pretrain`` writes it (random weights: what is copied is tested,
    not what was learnt)."""
    from ml_worker.adaptation.pretrain import PretrainConfig, pretrain_network
    from ml_worker.models.checkpoints import load_state_dict
    from ml_worker.models.native3d import save_native3d

    config = PretrainConfig(init_filters=init_filters, roi_size=(24, 32, 24))
    torch.manual_seed(3)
    save_native3d(pretrain_network(config), config.network_config(), path)
    return load_state_dict(path)


def test_the_first_model_starts_from_the_sites_pretrained_weights(hippo_project, tmp_path):
    from ml_worker.models.native3d import load_native3d

    hp = approved_project(hippo_project)
    # A file that is not there, or of another width, fails the round with what to fix; nothing is made.
    _pretraining_file(tmp_path / "wide.pt", init_filters=16)
    for name, message in (("missing.pt", "does not exist"), ("wide.pt", "another init_filters")):
        small_policy(hp.project, pretrained=str(tmp_path / name))
        job, _ = adaptation_start(project=hp.project, user=None)
        assert adaptation_run(job_id=job.id) is None
        job.refresh_from_db()
        assert job.state == Job.State.FAILED and message in job.error and name in job.error
    assert not ModelVersion.objects.filter(project=hp.project).exists()

    pretrained = _pretraining_file(tmp_path / "site_vf.pt", init_filters=8)
    small_policy(hp.project, pretrained=str(tmp_path / "site_vf.pt"))
    version = run_round(hp.project)
    assert version is not None and version.method == "full"  # the head is new: everything trains
    assert "init-pretrained-" in version.base_path
    job = Job.objects.get(pk=version.job_id)
    assert "init-pretrained-" in job.log
    assert job.params["method"] == "full" and job.params["requested_method"] == "lora_conv"
    base, _ = load_native3d(media_path(version.base_path))
    body = {k: v for k, v in base.state_dict().items() if not k.startswith(("conv_final.2.", "convInit."))}
    assert body and all(torch.equal(v, pretrained[k]) for k, v in body.items())
    stem = base.state_dict()["convInit.conv.weight"]
    assert torch.equal(stem[:, :1], pretrained["convInit.conv.weight"]) and not stem[:, 1:].any()


def test_a_round_without_approved_train_cases_fails_with_a_reason(hippo_project):
    hp = hippo_project(train=1, validation=1, pool=0)
    hp.approve(hp.cases["validation"][0])
    job, _ = adaptation_start(project=hp.project, user=None)
    adaptation_run(job_id=job.id)
    job.refresh_from_db()
    assert job.state == Job.State.FAILED and "No approved mask in the train split" in job.error


def test_an_unknown_method_is_refused_before_anything_is_queued(hippo_project):
    hp = hippo_project(train=0, validation=0, pool=1)
    with pytest.raises(ApplicationError, match="nonsense"):
        adaptation_start(project=hp.project, user=None, method="nonsense")
    assert not Job.objects.exists()


def test_a_second_trigger_joins_the_unfinished_round_and_cancel_stops_it(hippo_project):
    hp = hippo_project(train=1, validation=0, pool=0)
    job, created = adaptation_start(project=hp.project, user=None)
    again, created_again = adaptation_start(project=hp.project, user=None)
    assert created and not created_again and again == job
    job_cancel(job=job, user=hp.users["admin"])
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    assert adaptation_run(job_id=job.id) is None  # its message arriving later does nothing
    assert adaptation_start(project=hp.project, user=None)[1]  # a new round may start now
    with pytest.raises(ApplicationError, match="nothing to cancel"):
        job_cancel(job=job, user=hp.users["admin"])


def test_cancelling_a_running_round_stops_it_at_its_next_report(hippo_project, monkeypatch):
    hp = approved_project(hippo_project, train=2, validation=0, pool=0)
    job, _ = adaptation_start(project=hp.project, user=None)
    reports = []
    real = services.JobRun.report

    def report(self, progress=None, line=None, *, force=False):
        reports.append(progress)
        if len(reports) == 3:  # an admin cancels while it trains
            Job.objects.filter(pk=job.pk).update(cancel_requested=True)
        return real(self, progress, line, force=True)

    monkeypatch.setattr(services.JobRun, "report", report)
    assert adaptation_run(job_id=job.id) is None
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED and job.finished_at is not None
    assert not ModelVersion.objects.exists()


def test_a_job_held_by_a_live_worker_is_not_run_twice_but_a_lost_workers_job_is_taken_over(
    hippo_project, settings
):
    hp = hippo_project(train=1, validation=0, pool=0)
    job, _ = adaptation_start(project=hp.project, user=None)
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.RUNNING, worker="other-host:1", heartbeat_at=timezone.now(), attempts=1
    )
    with pytest.raises(services.JobBusy):
        adaptation_run(job_id=job.id)
    # The other worker stopped reporting longer than a lease ago: this one takes the job over.
    Job.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    )
    adaptation_run(job_id=job.id)  # fails: no approved train case; but it ran, as attempt 2
    job.refresh_from_db()
    assert job.attempts == 2 and "was lost" in job.log and job.state == Job.State.FAILED


def test_recovery_resends_lost_messages_and_reruns_then_fails_jobs_whose_worker_vanished(
    hippo_project, settings
):
    hp = hippo_project(train=0, validation=0, pool=1)
    queued, _ = pool_score_start(project=hp.project)
    old = timezone.now() - timedelta(seconds=settings.JOB_REDISPATCH_SECONDS + 5)
    Job.objects.filter(pk=queued.pk).update(dispatched_at=old)
    sent = []
    from learning import tasks

    original = tasks.pool_score.delay
    tasks.pool_score.delay = lambda job_id: sent.append(job_id)
    try:
        out = services.jobs_recover()
    finally:
        tasks.pool_score.delay = original
    assert out["resent"] == [queued.id] and sent == [queued.id]

    # Running, but its whole worker died an hour ago: sent again (the next worker takes it over) ...
    long_ago = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 5)
    Job.objects.filter(pk=queued.pk).update(
        state=Job.State.RUNNING, worker="gone:1", heartbeat_at=long_ago, dispatched_at=long_ago, attempts=1
    )
    tasks.pool_score.delay = lambda job_id: sent.append(job_id)
    try:
        assert services.jobs_recover()["resent"] == [queued.id]
        assert services.jobs_recover()["resent"] == []  # not again while that message is on its way
    finally:
        tasks.pool_score.delay = original
    queued.refresh_from_db()
    assert queued.state == Job.State.RUNNING and "sent again" in queued.log
    # ... until it has used its attempts: then it fails and says why.
    Job.objects.filter(pk=queued.pk).update(dispatched_at=long_ago, attempts=settings.JOB_MAX_ATTEMPTS)
    assert services.jobs_recover()["failed"] == [queued.id]
    queued.refresh_from_db()
    assert queued.state == Job.State.FAILED and "stopped reporting" in queued.error


def test_cold_start_ranks_the_pool_by_diversity_without_a_model(hippo_project):
    hp = hippo_project(train=0, validation=0, pool=4)
    job, _ = pool_score_start(project=hp.project)
    assert pool_score_run(job_id=job.id) == 4
    cases = list(Case.objects.filter(project=hp.project))
    assert {c.score_model for c in cases} == {services.COLD_START}
    assert sorted(c.score for c in cases) == [1.0, 2.0, 3.0, 4.0]
    assert all(c.score_reason.startswith("no model yet, ranked by diversity") for c in cases)
    assert not MaskVersion.objects.exists()  # no model: nothing to pre-segment


def test_the_tick_starts_a_round_after_n_approvals_and_scores_new_cases(
    hippo_project, django_capture_on_commit_callbacks
):
    hp = hippo_project(train=3, validation=1, pool=1)
    small_policy(hp.project, adapt_every=3)
    with django_capture_on_commit_callbacks(execute=False):
        out = learning_tick()
    assert out["adapt"] == [] and len(out["score"]) == 1  # nothing approved; new cases unscored
    for case in hp.cases["train"][:2]:
        hp.approve(case)
    with django_capture_on_commit_callbacks(execute=False):
        assert learning_tick()["adapt"] == []  # 2 < 3
    hp.approve(hp.cases["train"][2])
    with django_capture_on_commit_callbacks(execute=False):
        out = learning_tick()
    # 3 approved, but none in the locked validation split: the model could not be judged, so it waits
    assert out["adapt"] == [] and not Job.objects.filter(kind=Job.Kind.ADAPT).exists()
    assert "no approved case in the locked validation split" in out["waiting"][hp.project.id]
    hp.approve(hp.cases["validation"][0])
    with django_capture_on_commit_callbacks(execute=False):
        out = learning_tick()
    job = Job.objects.get(kind=Job.Kind.ADAPT)
    assert out["adapt"] == [job.id] and out["waiting"] == {}
    assert job.params == {
        "method": "lora_conv",
        "approved": 4,
        "trigger": "auto",
        "trains": "full",  # a first round; said before it starts
        "judged": True,  # against the first-model floor on the approved validation case
    }
    with django_capture_on_commit_callbacks(execute=False):
        assert learning_tick()["adapt"] == []  # no new approvals since that round
    Job.objects.filter(pk=job.pk).update(state=Job.State.FAILED, error="boom")
    with django_capture_on_commit_callbacks(execute=False):
        assert learning_tick()["adapt"] == []  # a failed automatic round is not started again every tick


def test_a_failed_round_an_admin_started_does_not_hold_back_the_automatic_one(
    hippo_project, django_capture_on_commit_callbacks
):
    hp = hippo_project(train=6, validation=1, pool=0)
    small_policy(hp.project, adapt_every=3)
    for case in hp.cases["validation"] + hp.cases["train"][:2]:
        hp.approve(case)
    with django_capture_on_commit_callbacks(execute=False):
        (auto,) = learning_tick()["adapt"]
    Job.objects.filter(pk=auto).update(state=Job.State.SUCCEEDED)
    for case in hp.cases["train"][2:4]:
        hp.approve(case)
    with django_capture_on_commit_callbacks(execute=False):
        manual, _ = adaptation_start(project=hp.project, user=hp.users["admin"], base_checkpoint="/nope.pt")
    assert manual.params["approved"] == 5
    Job.objects.filter(pk=manual.pk).update(state=Job.State.FAILED, error="bad checkpoint")
    hp.approve(hp.cases["train"][4])
    with django_capture_on_commit_callbacks(execute=False):
        out = learning_tick()  # 6 approved, 3 at the last round that counts
    (started,) = Job.objects.filter(pk__in=out["adapt"])
    assert started.params["trigger"] == "auto" and started.params["approved"] == 6


def test_pool_scoring_never_writes_over_human_work(hippo_project):
    hp = approved_project(hippo_project, train=5, validation=5, pool=2)
    run_round(hp.project)
    taken = hp.cases["pool"][0]
    from annotation.services import case_take

    case_take(case=taken, user=hp.users["annotator"])
    job = Job.objects.filter(kind=Job.Kind.SCORE).first() or pool_score_start(project=hp.project)[0]
    pool_score_run(job_id=job.id)
    assert not taken.versions.exists()
    other = hp.cases["pool"][1]
    assert other.versions.count() == 1
    np.testing.assert_array_equal(mask_read(other.versions.get().path).shape, hp.truth[other.id].shape)


def test_a_volume_read_twice_is_one_pool_item_whose_readings_share_its_rank(hippo_project, users):
    from annotation.readings.services import project_double_reading_set
    from annotation.services import case_take

    hp = hippo_project(train=0, validation=0, pool=3)
    project_double_reading_set(project=hp.project, percent=100, user=None)
    job, _ = pool_score_start(project=hp.project)
    assert pool_score_run(job_id=job.id) == 3  # volumes, not cases
    scores = {}
    for case in Case.objects.filter(project=hp.project):
        scores.setdefault(case.volume_id, set()).add((case.score, case.score_reason))
    assert all(len(pair) == 1 for pair in scores.values()), scores  # both readings, one rank
    assert sorted(next(iter(p))[0] for p in scores.values()) == [1.0, 2.0, 3.0]
    # a reading started: the other stays in the pool as the volume (not pushed down as a duplicate)
    first = Case.objects.filter(project=hp.project, reading=1).order_by("-score").first()
    case_take(case=first, user=users["annotator"])
    job, _ = pool_score_start(project=hp.project)
    assert pool_score_run(job_id=job.id) == 3
    second = Case.objects.get(project=hp.project, volume=first.volume, reading=2)
    first.refresh_from_db()
    assert second.score >= 1.0 and first.score == 0.0
