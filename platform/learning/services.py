"""Writes of the learning loop: jobs and their lifecycle, adaptation rounds, the model registry
(promotion, rollback) and scoring of the unlabelled pool.

The worker-side functions (``*_run``) take a job id: they claim the job row, do the work through
ml_worker, and record the outcome in PostgreSQL and the media store, never only in the broker. A
message delivered twice finds its job taken or finished; a lost one is sent again by
:func:`jobs_recover`; a killed worker's job is taken over and resumes from its training checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from accounts.models import User
from annotation.errors import CaseStateError
from annotation.models import Case, MaskVersion, Project, Review
from annotation.services import (
    CaseScore,
    audit_event,
    case_scores_set,
    presegmentation_create,
    project_intake,
)
from common.exceptions import ApplicationError
from common.media import media_path, media_relative
from learning import dispatch
from learning.models import Job, LearningPolicy, ModelVersion

log = logging.getLogger(__name__)

LOG_LINES = 40
COLD_START = "diversity (cold start)"


class JobCancelled(Exception):
    """An admin asked the running job to stop."""


class JobBusy(Exception):
    """Another live worker holds the job (a duplicate delivery): look again after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"job held by another worker; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease() -> timedelta:
    return timedelta(seconds=settings.JOB_LEASE_SECONDS)


def policy_get(project: Project) -> LearningPolicy:
    return LearningPolicy.objects.get_or_create(project=project)[0]


# ---- jobs -----------------------------------------------------------------------------------------


def job_dispatch(job_id: int) -> None:
    """Send a job's message (its id only) to its queue; marks when, so a lost message is noticed."""
    job = Job.objects.get(pk=job_id)
    send = {
        Job.Kind.ADAPT: dispatch.adaptation_run,
        Job.Kind.ADAPT_SAM: dispatch.adaptation_run,  # the same task (queue train): it reads the kind
        Job.Kind.SCORE: dispatch.pool_score,
    }[job.kind]
    send(job.id)
    Job.objects.filter(pk=job.id, state=Job.State.QUEUED).update(dispatched_at=timezone.now())


def job_create(*, project: Project, kind: str, params: dict, user: User | None) -> tuple[Job, bool]:
    """A queued job of `kind` for `project`, sent after commit; or the unfinished one of that kind that
    exists already (one per project and kind: a second trigger joins the first). Returns (job, created)."""
    try:
        with transaction.atomic():
            job = Job.objects.create(project=project, kind=kind, params=params, created_by=user)
    except IntegrityError:
        existing = Job.objects.filter(project=project, kind=kind, state__in=Job.UNFINISHED).first()
        if existing is None:  # finished in between: try once more
            return job_create(project=project, kind=kind, params=params, user=user)
        return existing, False
    audit_event(actor=user, action=f"job.{kind}", obj=job, **params)
    transaction.on_commit(lambda: job_dispatch(job.id))
    return job, True


def job_cancel(*, job: Job, user: User) -> Job:
    """Cancel a queued job at once; ask a running one to stop (it stops at its next progress report).
    A finished job cannot be cancelled."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.finished:
            raise ApplicationError(f"Job {job.id} has {job.state} already; there is nothing to cancel.")
        if job.state == Job.State.QUEUED:
            job.state, job.finished_at = Job.State.CANCELLED, timezone.now()
            job.log = _tail(job.log, f"cancelled by {user.username} before it started")
        else:
            job.cancel_requested = True
            job.log = _tail(job.log, f"cancellation requested by {user.username}")
        job.save()
        audit_event(actor=user, action="job.cancel", obj=job)
    return job


def _tail(log_text: str, line: str) -> str:
    lines = (log_text.splitlines() + [f"{timezone.now():%H:%M:%S} {line}"])[-LOG_LINES:]
    return "\n".join(lines)


def _dead_here(worker: str) -> bool:
    """Whether `worker` (host:pid) was a process on this host that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class JobRun:
    """A claimed job as its worker sees it: report progress and log lines (which also renews the lease
    and notices a cancellation)."""

    job: Job
    min_interval: float = 1.0
    _last: float = 0.0

    def report(self, progress: float | None = None, line: str | None = None, *, force: bool = False) -> None:
        now = timezone.now()
        if not force and line is None and (now.timestamp() - self._last) < self.min_interval:
            return
        self._last = now.timestamp()
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=self.job.pk)
            if job.cancel_requested:
                raise JobCancelled()
            if progress is not None:
                job.progress = max(0.0, min(100.0, float(progress)))
            if line:
                job.log = _tail(job.log, line)
            job.heartbeat_at = now
            job.save(update_fields=["progress", "log", "heartbeat_at"])
        self.job = job


def _claim(job_id: int, kind: str) -> Job | None:
    """Take the job for this process: None when it is finished (nothing to do)."""
    me = worker_id()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, kind=kind).first()
        if job is None or job.finished:
            return None
        now = timezone.now()
        if job.state == Job.State.RUNNING and job.worker != me:
            fresh = job.heartbeat_at is not None and now - job.heartbeat_at < _lease()
            if fresh and not _dead_here(job.worker):
                raise JobBusy(settings.JOB_LEASE_SECONDS)
            job.log = _tail(job.log, f"worker {job.worker} was lost; {me} takes over")
        if job.cancel_requested:
            job.state, job.finished_at = Job.State.CANCELLED, now
            job.save()
            return None
        job.state, job.worker, job.heartbeat_at = Job.State.RUNNING, me, now
        job.started_at = job.started_at or now
        job.attempts += 1
        job.log = _tail(job.log, f"started on {me} (attempt {job.attempts})")
        job.save()
        return job


def _finish(job: Job, state: str, *, result: dict | None = None, error: str = "", line: str = "") -> None:
    with transaction.atomic():
        row = Job.objects.select_for_update().get(pk=job.pk)
        if row.finished:
            return
        row.state, row.finished_at, row.error = state, timezone.now(), error
        if result is not None:
            row.result = result
        if state == Job.State.SUCCEEDED:
            row.progress = 100.0
        row.log = _tail(row.log, line or state)
        row.save()


@contextmanager
def job_running(job_id: int, kind: str) -> Iterator[JobRun | None]:
    """Claim the job and record how it ends: cancelled, failed with a message for the admin (a user's
    error, a bad checkpoint), or failed as an internal error (logged, then re-raised). Yields None when
    there is nothing to do (finished already, or cancelled before it started)."""
    from ml_worker.adaptation.adapter import AdapterError
    from ml_worker.models.checkpoints import CheckpointError

    job = _claim(job_id, kind)
    if job is None:
        yield None
        return
    run = JobRun(job)
    try:
        yield run
    except JobCancelled:
        _finish(job, Job.State.CANCELLED, line="cancelled")
    except (ApplicationError, CheckpointError, AdapterError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        _finish(job, Job.State.FAILED, error=message, line=f"failed: {message}")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        message = f"internal error ({type(exc).__name__}: {exc}); see the worker log"
        _finish(job, Job.State.FAILED, error=message, line="failed: internal error")
        raise


def jobs_recover() -> dict:
    """Beat's safety net: re-send queued jobs whose message was lost (a broker without persistence
    restarted), and running jobs whose worker stopped reporting long ago (its whole worker was killed:
    the next worker takes the job over and resumes it), up to ``JOB_MAX_ATTEMPTS``; then they fail."""
    now = timezone.now()
    resend = Job.objects.filter(
        state=Job.State.QUEUED, dispatched_at__lt=now - timedelta(seconds=settings.JOB_REDISPATCH_SECONDS)
    )
    resent, failed = [], []
    for job in resend:
        job_dispatch(job.id)
        resent.append(job.id)
    stale = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    lost = Job.objects.filter(state=Job.State.RUNNING, heartbeat_at__lt=stale).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale)
    )
    for job in lost:
        if job.attempts < settings.JOB_MAX_ATTEMPTS:
            line = f"worker {job.worker} stopped reporting at {job.heartbeat_at:%H:%M:%S}; sent again"
            Job.objects.filter(pk=job.pk).update(dispatched_at=now, log=_tail(job.log, line))
            job_dispatch(job.id)
            resent.append(job.id)
            continue
        _finish(
            job,
            Job.State.FAILED,
            error=f"the worker ({job.worker}) stopped reporting at {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC, "
            f"after {job.attempts} attempts",
            line="failed: worker lost",
        )
        failed.append(job.id)
    return {"resent": resent, "failed": failed}


# ---- model registry -------------------------------------------------------------------------------


def active_version(project: Project, model: str = ModelVersion.Model.NATIVE3D) -> ModelVersion | None:
    """The project's active version of `model` (the native net pre-segments and scores by default)."""
    return ModelVersion.objects.filter(project=project, model=model, state=ModelVersion.State.ACTIVE).first()


def _activate(version: ModelVersion, *, user: User | None, action: str) -> ModelVersion:
    LearningPolicy.objects.select_for_update().get_or_create(project=version.project)  # serialise per project
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    previous = active_version(version.project, version.model)
    if previous is not None:
        if previous.pk == version.pk:
            raise ApplicationError(f"Model v{version.number} is the active model already.")
        previous.state = ModelVersion.State.RETIRED
        previous.save(update_fields=["state"])
    version.state, version.activated_at = ModelVersion.State.ACTIVE, timezone.now()
    version.save(update_fields=["state", "activated_at"])
    audit_event(
        actor=user, action=action, obj=version, previous=None if previous is None else previous.number
    )
    project, by = version.project, user
    if version.model == ModelVersion.Model.NATIVE3D:  # LiteMedSAM neither pre-segments nor scores
        transaction.on_commit(lambda: pool_score_start(project=project, user=by))
    return version


@transaction.atomic
def model_promote(*, version: ModelVersion, user: User | None) -> ModelVersion:
    """Make a candidate the active model (the previous one retires); the pool is re-scored with it.
    Only a candidate the validation gate found better may be promoted."""
    if version.state != ModelVersion.State.CANDIDATE:
        raise ApplicationError(
            f"Model v{version.number} is {version.state}, not a candidate; to go back to it, roll back."
        )
    if not version.gate.get("promotable"):
        raise ApplicationError(
            f"Model v{version.number} did not pass the validation gate: {version.gate.get('reason', '')}"
        )
    return _activate(version, user=user, action="model.promote")


@transaction.atomic
def model_rollback(*, version: ModelVersion, user: User) -> ModelVersion:
    """Make an earlier model active again in one action (the current one retires)."""
    if version.activated_at is None:
        raise ApplicationError(
            f"Model v{version.number} was never active: a rollback returns to an earlier active model; "
            "a candidate is promoted (if the validation gate allows)."
        )
    return _activate(version, user=user, action="model.rollback")


def _file(path: Path) -> tuple[str, str]:
    from ml_worker.models.checkpoints import file_sha256

    return media_relative(path), file_sha256(path)


@transaction.atomic
def model_version_record(
    *,
    job: Job,
    result,
    parent: ModelVersion | None,
    base: Path,
    snapshot: list[int],
    parent_rival: ModelVersion | None = None,
):
    """The row of a round's model, once its files exist; the same job never records two. `parent_rival`:
    the other network's active version the round scored on the same prompts (``result.extra["rival"]``),
    which routing compares against."""
    existing = ModelVersion.objects.filter(job=job).first()
    if existing is not None:
        return existing
    LearningPolicy.objects.select_for_update().get_or_create(project=job.project)
    number = (ModelVersion.objects.filter(project=job.project).aggregate(n=Max("number"))["n"] or 0) + 1
    # A base in the media store is kept relative to it (the store may move); an admin's file as given.
    base_path = media_relative(base) if Path(base).is_relative_to(settings.MEDIA_ROOT) else str(base)
    adapter_path, adapter_sha = _file(result.adapter)
    weights_path, weights_sha = _file(result.weights)
    gate = {"promotable": result.promotable, "reason": result.reason}
    if result.gate is not None:
        gate.update(
            p_value=result.gate.p_value,
            mean_delta=result.gate.mean_delta,
            n=result.gate.n,
            candidate_mean=result.gate.candidate_mean,
            active_mean=result.gate.active_mean,
        )
    if result.interactive:
        gate["interactive"] = result.interactive_summary  # mean Dice after the box and each click
    model = result.extra.get("model", ModelVersion.Model.NATIVE3D)
    rival = result.extra.get("rival")  # the other network's curve on the same prompts
    if rival is not None and parent_rival is not None and "interactive" in gate:
        gate["interactive"]["rival"] = {
            "model": parent_rival.model,
            "number": parent_rival.number,
            "curve": rival,
        }
    version = ModelVersion.objects.create(
        project=job.project,
        model=model,
        number=number,
        parent=parent,
        job=job,
        method=result.method,
        base_path=base_path,
        base_sha256=result.base_sha256,
        adapter_path=adapter_path,
        adapter_sha256=adapter_sha,
        weights_path=weights_path,
        weights_sha256=weights_sha,
        snapshot=snapshot,
        validation=result.validation,
        validation_dice=result.validation_dice,
        gate=gate,
        history=result.history,
        train_seconds=result.seconds,
    )
    audit_event(actor=None, action="model.candidate", obj=version, gate=gate)
    return version


# ---- adaptation -----------------------------------------------------------------------------------


def approved_versions(project: Project) -> dict[int, MaskVersion]:
    """Case id -> the version its approval is about (approved cases only)."""
    reviews = (
        Review.objects.filter(
            case__project=project, case__status=Case.Status.APPROVED, decision=Review.Decision.APPROVE
        )
        .select_related("version", "case__volume")
        .order_by("case_id", "created_at")
    )
    return {r.case_id: r.version for r in reviews}


def _approved_at_last_round(project: Project) -> int:
    """Approved masks counted when the last round was asked for. Cancelled rounds do not count, nor do
    failed rounds a person started (a bad checkpoint should not hold back the automatic round); a
    failed automatic round does, so the tick does not start the same failing round every minute."""
    jobs = Job.objects.filter(project=project, kind=Job.Kind.ADAPT).exclude(state=Job.State.CANCELLED)
    counted = (j for j in jobs if j.state != Job.State.FAILED or j.params.get("trigger") == "auto")
    return max((int(j.params.get("approved", 0)) for j in counted), default=0)


def _check_method(name: str) -> str:
    from ml_worker.adaptation.peft import get_method

    try:
        get_method("native3d", name)
    except (KeyError, ValueError) as exc:
        raise ApplicationError(str(exc).strip("'\"")) from None
    return name


def adaptation_start(
    *,
    project: Project,
    user: User | None,
    method: str = "",
    base_checkpoint: str = "",
    trigger: str = "admin",
) -> tuple[Job, bool]:
    """Queue an adaptation round (queue train) with `method` (default: the project's); joins the round
    already queued or running. `base_checkpoint`: start from this native 3D checkpoint file instead of
    the active model (e.g. a site's pretrained network)."""
    from learning.selectors import adaptation_plan

    policy = policy_get(project)
    requested = _check_method(method or policy.method)
    plan = adaptation_plan(project=project, method=requested, base_checkpoint=base_checkpoint)
    params = {
        "method": requested,
        "approved": len(approved_versions(project)),
        "trigger": trigger,
        # what the round will do, as said beforehand: the dashboard shows it until the round reports
        "trains": plan.trains,
        "judged": plan.judged,
    }
    if base_checkpoint:
        params["base_checkpoint"] = base_checkpoint
    return job_create(project=project, kind=Job.Kind.ADAPT, params=params, user=user)


def _train_cases(project: Project, approved: dict[int, MaskVersion]):
    from ml_worker.adaptation.train import TrainCase

    values = tuple(project.labels.values_list("value", flat=True))
    cases = {"train": [], "validation": []}
    for version in approved.values():
        case = version.case
        if case.split in cases:
            cases[case.split].append(
                TrainCase(
                    image=media_path(case.volume.path),
                    label=media_path(version.path),
                    labelled=values,
                    case_id=f"case-{case.id}",
                )
            )
    return cases["train"], cases["validation"]


def _base_for(project: Project, job: Job, policy: LearningPolicy, active: ModelVersion | None) -> Path:
    """The checkpoint a round starts from: the one the admin named, the active model (warm start), the
    project's base checkpoint, or a seeded initialisation of the network (with the project's pretrained
    weights, if any)."""
    from ml_worker.adaptation.pretrain import TransferError
    from ml_worker.adaptation.round import initial_checkpoint
    from ml_worker.models.checkpoints import CheckpointError, file_sha256

    named = job.params.get("base_checkpoint") or ("" if active is not None else policy.base_checkpoint)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ApplicationError(f"The base checkpoint {named} does not exist (as seen by the worker).")
        return path
    if active is not None:
        return media_path(active.weights_path)
    pretrained = Path(policy.pretrained) if policy.pretrained else None
    name = "init.pt"
    if pretrained is not None:
        if not pretrained.is_file():
            raise ApplicationError(
                f"The pretrained file {pretrained} does not exist (as seen by the worker)."
            )
        name = f"init-pretrained-{file_sha256(pretrained)[:16]}.pt"  # another file, another init
    path = media_path(f"models/project-{project.id}/{name}")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = dict(project.labels.values_list("value", "name"))
        try:
            initial_checkpoint(labels, path, pretrained=pretrained, **policy.network)
        except (CheckpointError, TransferError) as exc:
            raise ApplicationError(f"The pretrained file {pretrained} cannot be used: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ApplicationError(
                f"The project's network settings {policy.network} are invalid: {exc}"
            ) from None
    return path


def _round_inputs(project: Project):
    """A round's policy, approved masks and train / locked validation cases; no train case is an error."""
    policy = policy_get(project)
    approved = approved_versions(project)
    cases, validation = _train_cases(project, approved)
    if not cases:
        raise ApplicationError("No approved mask in the train split yet: approve some cases before adapting.")
    return policy, approved, cases, validation


def adaptation_run(*, job_id: int) -> ModelVersion | None:
    """Worker side of an adaptation round (see ml_worker.adaptation.round): train, judge on the locked
    validation split, record the candidate, promote it when the gate says so and the project does not
    ask for manual promotion. A LiteMedSAM round (its own job kind) goes to sam_adaptation_run."""
    from ml_worker.adaptation.round import GateOptions, adaptation_round
    from ml_worker.adaptation.train import TrainConfig

    if Job.objects.filter(pk=job_id, kind=Job.Kind.ADAPT_SAM).exists():
        return sam_adaptation_run(job_id=job_id)
    with job_running(job_id, Job.Kind.ADAPT) as run:
        if run is None:
            return ModelVersion.objects.filter(job_id=job_id).first()
        job = run.job
        project = job.project
        policy, approved, cases, validation = _round_inputs(project)
        active = active_version(project)
        base = _base_for(project, job, policy, active)
        method = job.params["method"]
        if active is None and not (job.params.get("base_checkpoint") or policy.base_checkpoint):
            method = "full"  # an initialisation (pretrained or not) has an untrained head: train it all
            job.params = job.params | {"method": method, "requested_method": job.params["method"]}
            Job.objects.filter(pk=job.pk).update(params=job.params)  # what the dashboard shows
        start = base.name
        if active is not None and base == media_path(active.weights_path):
            start = f"the active model v{active.number}"
        run.report(1, f"{method} on {len(cases)} train and {len(validation)} validation cases, from {start}")
        train = TrainConfig(
            epochs=policy.epochs,
            steps_per_epoch=policy.steps_per_epoch,
            lr=policy.lr,
            seed=job.id,
            modality=project.modality or "MR",
            validate_every=policy.epochs,
        )
        total = train.epochs * train.steps_per_epoch

        def progress(epoch: int, step: int, steps: int, metrics: dict) -> None:
            line = None
            if step % (train.steps_per_epoch or 1) == 0:
                line = f"epoch {epoch}: loss {metrics.get('loss', 0):.4f}"
            run.report(2 + 88 * step / max(total, 1), line)

        result = adaptation_round(
            base=base,
            method=method,
            cases=cases,
            validation=validation,
            train=train,
            out_dir=media_path(f"models/project-{project.id}/job-{job.id}"),
            active=None if active is None else media_path(active.weights_path),
            snapshot_ids=[str(v.id) for v in approved.values()],
            options=GateOptions(margin=policy.margin, alpha=policy.alpha, floor=policy.first_floor),
            progress=progress,
        )
        run.report(95, result.reason)
        version = model_version_record(
            job=job,
            result=result,
            parent=active,
            base=base,
            snapshot=sorted(v.id for v in approved.values()),
        )
        return _finish_round(job, version, result, policy)


def sam_adaptation_start(*, project: Project, user: User | None, trigger: str = "admin") -> tuple[Job, bool]:
    """Queue a LiteMedSAM adaptation round (queue train): its mask decoder adapted on the approved train
    cases, judged against the LiteMedSAM that answers the project now; joins the one queued or running."""
    from ml_worker.adaptation.round import SAM_METHODS

    params = {
        "model": ModelVersion.Model.LITEMEDSAM,
        "method": SAM_METHODS[0],
        "approved": len(approved_versions(project)),
        "trigger": trigger,
    }
    return job_create(project=project, kind=Job.Kind.ADAPT_SAM, params=params, user=user)


def _finish_round(job: Job, version: ModelVersion, result, policy: LearningPolicy) -> ModelVersion:
    outcome = "candidate"
    if result.promotable and not policy.manual_promotion:
        model_promote(version=version, user=None)
        outcome = "promoted"
    elif result.promotable:
        outcome = "candidate (waits for an admin to promote it)"
    _finish(
        job,
        Job.State.SUCCEEDED,
        result={
            "model_version": version.number,
            "outcome": outcome,
            "validation_dice": version.validation_dice,
        },
        line=f"model v{version.number}: {outcome}",
    )
    return version


def sam_adaptation_run(*, job_id: int) -> ModelVersion | None:
    """Worker side of a LiteMedSAM round (ml_worker.adaptation.round.sam_adaptation_round): adapt the
    bundled LiteMedSAM's decoder on the approved train cases over the interactive worker's slice
    embeddings (encoding only volumes nobody prompted), judge it on the locked validation split against
    the LiteMedSAM answering now, score the active native net on the same boxes and clicks (routing
    compares the two), record the candidate and promote it as a native round would."""
    from annotation import interactive
    from ml_worker.adaptation.round import GateOptions, sam_adaptation_round
    from ml_worker.adaptation.train_sam import SamTrainConfig
    from ml_worker.inference.embeddings import EmbeddingCache
    from ml_worker.models.checkpoints import litemedsam_weights_path

    with job_running(job_id, Job.Kind.ADAPT_SAM) as run:
        if run is None:
            return ModelVersion.objects.filter(job_id=job_id).first()
        job = run.job
        project = job.project
        policy, approved, cases, validation = _round_inputs(project)
        active = active_version(project, ModelVersion.Model.LITEMEDSAM)
        rival = active_version(project)
        against = "the bundled LiteMedSAM" if active is None else f"LiteMedSAM v{active.number}"
        run.report(
            1,
            f"LiteMedSAM decoder on {len(cases)} train and {len(validation)} validation cases, "
            f"against {against}",
        )
        # the policy's epochs x steps, with LiteMedSAM's own learning rate (its lr is the native net's)
        train = SamTrainConfig(steps=max(1, policy.epochs * policy.steps_per_epoch), seed=job.id)

        def progress(step: int, steps: int, loss: float) -> None:
            line = f"step {step}: loss {loss:.4f}" if step % max(1, steps // 4) == 0 else None
            run.report(2 + 78 * step / steps, line)

        result = sam_adaptation_round(
            method=job.params["method"],
            cases=cases,
            validation=validation,
            train=train,
            out_dir=media_path(f"models/project-{project.id}/job-{job.id}"),
            active=None if active is None else media_path(active.weights_path),
            active_sha256=None if active is None else active.weights_sha256,
            rival=None if rival is None else media_path(rival.weights_path),
            modality=project.modality or "MR",
            embeddings=EmbeddingCache(
                max_bytes=settings.INTERACTIVE_CACHE_BYTES, directory=interactive.embeddings_dir()
            ),
            encoder=settings.INTERACTIVE_ENCODER,
            snapshot_ids=[str(v.id) for v in approved.values()],
            options=GateOptions(margin=policy.margin, alpha=policy.alpha, floor=policy.first_floor),
            progress=progress,
        )
        run.report(95, result.reason)
        version = model_version_record(
            job=job,
            result=result,
            parent=active,
            base=litemedsam_weights_path(),
            snapshot=sorted(v.id for v in approved.values()),
            parent_rival=rival,
        )
        return _finish_round(job, version, result, policy)


# ---- pre-segmentation and scoring -----------------------------------------------------------------


def pool_score_start(*, project: Project, user: User | None = None) -> tuple[Job, bool]:
    """Queue pre-segmentation and scoring of the project's unlabelled cases (queue gpu)."""
    return job_create(project=project, kind=Job.Kind.SCORE, params={}, user=user)


def _stored_item(case: Case, label: str, needs: tuple[str, ...]):
    """The pool item a scoring run stored for `case` with the model `label` and the scores `needs`, or
    None."""
    import numpy as np

    from ml_worker.uncertainty.pool import PoolItem

    inputs = case.score_inputs or {}
    if case.score_model != label or inputs.get("model") != label or "embedding" not in inputs:
        return None
    if not set(needs) <= set(inputs.get("scores", {})):
        return None
    return PoolItem(
        volume_id=str(case.id), scores=inputs.get("scores", {}), embedding=np.asarray(inputs["embedding"])
    )


def _labelled_item(scorer, case: Case):
    """A worked-on case as a diversity centre: the embedding stored when it was in the pool (model-free,
    so any run's will do), else computed from its volume."""
    import numpy as np

    from ml_worker.uncertainty.pool import PoolItem

    embedding = (case.score_inputs or {}).get("embedding")
    if embedding is None:
        return scorer.embedded(f"done-{case.id}", media_path(case.volume.path))
    return PoolItem(volume_id=f"done-{case.id}", embedding=np.asarray(embedding))


def pool_score_run(*, job_id: int) -> int | None:
    """Worker side: with the active model, pre-segment each new case nobody has worked on (a newer
    version on top of an older model's) and score it; rank the whole pool with the project's strategy
    (by diversity at cold start) and store the worklist order. Cases this model scored before are not
    run again: their stored scores and embedding re-enter the ranking. Cases that left the pool (taken,
    submitted, approved) drop to the end. A volume read twice is one pool item: its unstarted readings
    share its score and pre-segmentation, and a started reading does not count as labelled while the
    other waits. A project that ranks by ``disagreement`` also asks LiteMedSAM for its answer to the native
    net's boxes (see _second_opinion). Returns how many pool items (volumes) were ranked."""
    with job_running(job_id, Job.Kind.SCORE) as run:
        if run is None:
            return None
        project = run.job.project
        # A model promoted while this ran joined this job (one per project): score again with it.
        for _ in range(3):
            result = _pool_score(run, project)
            active = active_version(project)
            if result["model"] == (COLD_START if active is None else active.label):
                break
        _finish(run.job, Job.State.SUCCEEDED, result=result)
        return result["ranked"]


def _pool_score(run, project: Project) -> dict:
    from ml_worker.adaptation.round import PoolScorer

    policy = policy_get(project)
    active = active_version(project)
    needs = () if active is None else _scores_needed(policy)
    second = _second_opinion(run, project) if "disagreement" in needs else None
    scorer = PoolScorer(
        None if active is None else media_path(active.weights_path),
        modality=project.modality or "MR",
        second_opinion=second,
    )
    label = COLD_START if active is None else active.label
    readings: dict[int, list[Case]] = {}  # volume -> its unstarted cases, reading 1 first
    for case in (
        Case.objects.filter(project=project, status=Case.Status.NEW)
        .select_related("volume")
        .order_by("reading", "id")
    ):
        readings.setdefault(case.volume_id, []).append(case)
    pool = [cases[0] for cases in readings.values()]
    volume_of = {case.id: case.volume_id for case in pool}
    items, inputs, todo = [], {}, []
    for case in pool:
        stored = _stored_item(case, label, needs)
        if stored is None:
            todo.append(case)
        else:
            items.append(stored)
    choice = _presegmentation_choice(run, project, scorer) if second is not None and todo else None
    preseg = label if choice is None or choice["use"] == "model" else active.second_opinion_label
    run.report(0, f"{len(todo)} of {len(pool)} unlabelled cases to score with {label}", force=True)
    for i, case in enumerate(todo, 1):
        scored = scorer.item(str(case.id), media_path(case.volume.path))
        item = scored.item
        items.append(item)
        inputs[case.id] = {
            "model": label,
            "scores": dict(item.scores),
            "embedding": item.embedding.tolist(),
        }
        labels = scored.second if preseg != label else scored.labels
        if labels is not None:
            for reading in readings[case.volume_id]:  # both readers start from the same mask
                try:
                    presegmentation_create(case=reading, mask=labels, model_version=preseg)
                except CaseStateError:
                    pass  # taken meanwhile: the annotator's work wins
        run.report(90 * i / max(len(todo), 1))
    done = list(Case.objects.filter(project=project).exclude(status=Case.Status.NEW).select_related("volume"))
    labelled = [_labelled_item(scorer, c) for c in done if c.volume_id not in readings]
    ranked = scorer.rank(items, strategy=policy.strategy, labelled=labelled)
    scores = [
        CaseScore(
            case_id=reading.id,
            score=float(len(ranked) - i),
            reason=r.reason,
            inputs=inputs.get(int(r.volume_id)),
        )
        for i, r in enumerate(ranked)
        for reading in readings[volume_of[int(r.volume_id)]]
    ]
    scores += [CaseScore(case_id=c.id, score=0.0, reason="not in the pool: worked on") for c in done]
    case_scores_set(
        project=project, scores=scores, model=label, version="" if active is None else str(active.number)
    )
    out = {"ranked": len(ranked), "scored_now": len(todo), "model": label}
    return out if choice is None else out | {"presegmentation": choice}


def _scores_needed(policy: LearningPolicy) -> tuple[str, ...]:
    """Scores a pool item must have beyond the entropy every scoring run gives, for the project's
    strategy: ``disagreement`` (the native net against LiteMedSAM on its boxes) only when the strategy
    ranks by it, since it costs the slice embeddings of every pool volume's structure slab, which nothing
    else pays for once the native net answers the clicks."""
    from ml_worker.uncertainty.strategies import get_strategy

    return ("disagreement",) if get_strategy(policy.strategy).score_key == "disagreement" else ()


def _second_opinion(run, project: Project):
    """LiteMedSAM (the project's adapted version, else the bundled one) prompted with a box around each
    structure of a native label map: ``(volume path, label map) -> label map``."""
    from annotation import interactive
    from ml_worker.models.checkpoints import CheckpointError
    from studies.models import Volume

    segmenter = interactive.segmenter()
    sam = active_version(project, ModelVersion.Model.LITEMEDSAM)
    weights = None if sam is None else (media_path(sam.weights_path), sam.weights_sha256)
    if weights is not None:
        try:
            segmenter.decoder(*weights)
        except CheckpointError as exc:
            run.report(
                line=f"LiteMedSAM version {sam.number} cannot be loaded ({exc}): the bundled one "
                "gives the second opinion",
                force=True,
            )
            weights = None
    sha256 = {
        str(media_path(v.path)): v.sha256
        for v in Volume.objects.filter(cases__project=project).only("path", "sha256").distinct()
    }

    def second(path: Path, labels):
        return segmenter.boxed(
            volume_path=path,
            volume_sha256=sha256[str(path)],
            labels=labels,
            weights=None if weights is None else weights[0],
            weights_sha256=None if weights is None else weights[1],
        )

    return second


def _presegmentation_choice(run, project: Project, scorer) -> dict:
    """Whether the second opinion pre-segments better than the native net on the approved cases of the
    locked validation split (mean Dice per case); with none approved yet, the native net's stays."""
    _, validation = _train_cases(project, approved_versions(project))
    if not validation:
        choice = {"cases": 0, "model": None, "second": None, "use": "model"}
        run.report(line="no approved validation case: pre-segmenting with the native net", force=True)
        return choice
    choice = scorer.presegmentation_choice(validation)
    run.report(
        line=f"pre-segmentation on {choice['cases']} validation cases: native net {choice['model']:.3f}, "
        f"LiteMedSAM on its boxes {choice['second']:.3f}: using "
        + ("the native net" if choice["use"] == "model" else "LiteMedSAM on the native net's boxes"),
        force=True,
    )
    return choice


# ---- the periodic check ---------------------------------------------------------------------------


def learning_tick() -> dict:
    """What beat runs every minute: recover lost jobs; per project, take in new volumes that match its
    intake rule, start a round when enough new masks were approved since the last one (and its model can
    be judged on the locked validation split; ``waiting`` says why not), and score new or stale cases of
    the pool."""
    out = {"recovered": jobs_recover(), "added": {}, "adapt": [], "waiting": {}, "score": []}
    for project in Project.objects.all():
        added = project_intake(project=project)
        if added:
            out["added"][project.id] = added
        policy = policy_get(project)
        approved = len(approved_versions(project))
        if policy.adapt_every and approved - _approved_at_last_round(project) >= policy.adapt_every:
            from learning.selectors import adaptation_plan

            # A round whose model could be neither judged nor promoted would spend the train queue on
            # nothing: the automatic one waits (an admin can still start it, after a confirmation).
            plan = adaptation_plan(project=project)
            if plan.judged and not plan.problem:
                job, created = adaptation_start(project=project, user=None, trigger="auto")
                if created:
                    out["adapt"].append(job.id)
            else:
                out["waiting"][project.id] = plan.problem or plan.judgement
        active = active_version(project)
        label = COLD_START if active is None else active.label
        stale = Case.objects.filter(project=project, status=Case.Status.NEW).exclude(score_model=label)
        for name in () if active is None else _scores_needed(policy):  # the strategy changed since
            stale |= Case.objects.filter(project=project, status=Case.Status.NEW).exclude(
                score_inputs__scores__has_key=name
            )
        if stale.exists():
            job, created = pool_score_start(project=project)
            if created:
                out["score"].append(job.id)
    return out
