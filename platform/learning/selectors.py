"""Reads of the learning loop for its dashboard and API: model versions with their lineage, recent
jobs, the PEFT methods a round may use, the broker's queues and workers, and annotation effort over
time (does each promoted model make the next cases cheaper?)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from django.db.models import QuerySet

from annotation.models import AuditEvent, Case, MaskVersion, Project, Review
from common.exceptions import ApplicationError
from learning.models import SECOND_OPINION_SUFFIX, Job, LearningPolicy, ModelVersion

log = logging.getLogger(__name__)

LINEAGE_SHOWN = 6  # versions named in a lineage before it is cut short ("v9 ← v8 ← … ← v1")
EFFORT_FIELDS = ("seconds", "clicks", "strokes", "model_calls")


# ---- model versions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    """A model version as the dashboard lists it."""

    version: ModelVersion
    lineage: str  # "v3 ← v2 ← v1": the version, its parent, the parent's parent...
    approved: int  # approved masks in its training snapshot
    can_promote: bool  # a candidate the validation gate found better
    can_rollback: bool  # not active now, but was once

    @property
    def gate_verdict(self) -> str:
        gate = self.version.gate
        if not gate:
            return ""
        return "passed" if gate.get("promotable") else "failed"

    @property
    def train_time(self) -> str:
        seconds = round(self.version.train_seconds or 0)
        if seconds < 120:
            return f"{seconds} s"
        if seconds < 7200:
            return f"{seconds // 60} min {seconds % 60:02d} s"
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def policy_of(*, project: Project) -> LearningPolicy:
    """The project's learning policy, or the default one (unsaved) when none was stored yet."""
    return LearningPolicy.objects.filter(project=project).first() or LearningPolicy(project=project)


@dataclass(frozen=True)
class RoundPlan:
    """What an adaptation round started now would do, said before it starts: the method it trains (a
    first round without a base checkpoint trains ``full`` whatever was asked), what it starts from, the
    approved cases it learns from and is judged on, and whether its model can be judged at all."""

    requested: str
    trains: str
    start: str
    n_train: int
    n_validation: int
    judged: bool
    judgement: str  # how the model is judged, or why it cannot be
    problem: str = ""  # why the round would fail at once ("" when it can run)

    @property
    def summary(self) -> str:
        if self.trains == self.requested:
            what = f"Trains {self.trains} from {self.start}"
        else:
            what = (
                f"Trains {self.trains} (a first round, from {self.start}; {self.requested} applies from the "
                "next round)"
            )
        plural = "" if self.n_train == 1 else "s"
        return f"{what} on {self.n_train} approved train case{plural}; {self.judgement}."


def adaptation_plan(*, project: Project, method: str = "", base_checkpoint: str = "") -> RoundPlan:
    """The RoundPlan of a round with ``method`` (default: the policy's; an unknown one raises
    ApplicationError) started now. The rules are the
    round's own (learning.services.adaptation_run) and the validation gate's (ml_worker.adaptation.gate):
    a first model must have at least one approved validation case to meet the floor, a later one enough
    paired cases for the signed-rank test at the policy's alpha."""
    from ml_worker.adaptation.gate import min_cases
    from ml_worker.adaptation.peft import get_method

    policy = policy_of(project=project)
    requested = method or policy.method
    try:
        get_method("native3d", requested)
    except (KeyError, ValueError) as exc:
        raise ApplicationError(str(exc).strip("'\"")) from None
    active = ModelVersion.objects.filter(
        project=project, model=ModelVersion.Model.NATIVE3D, state=ModelVersion.State.ACTIVE
    ).first()
    approved = (
        Review.objects.filter(
            case__project=project, case__status=Case.Status.APPROVED, decision=Review.Decision.APPROVE
        )
        .values_list("case_id", "case__split")
        .distinct()
    )
    splits = defaultdict(set)
    for case_id, split in approved:
        splits[split].add(case_id)
    n_train, n_validation = len(splits[Case.Split.TRAIN]), len(splits[Case.Split.VALIDATION])
    named = base_checkpoint or ("" if active is not None else policy.base_checkpoint)
    if named:
        trains, start = requested, f"the base checkpoint {named}"
    elif active is not None:
        trains, start = requested, f"the active model v{active.number}"
    else:
        trains = "full"
        start = "the site's pretrained weights" if policy.pretrained else "a fresh initialisation"
    cases = f"{n_validation} approved validation case{'' if n_validation == 1 else 's'}"
    if active is None:
        judged = n_validation >= 1
        judgement = (
            f"judged on {cases} against the first-model floor (mean Dice {policy.first_floor})"
            if judged
            else "it cannot be judged: there is no approved case in the locked validation split, so the "
            "model it makes can be neither checked nor promoted"
        )
    else:
        needed = min_cases(policy.alpha)
        judged = n_validation >= needed
        verb = "is" if n_validation == 1 else "are"
        judgement = (
            f"judged against v{active.number} on {cases}"
            if judged
            else f"it cannot be judged: comparing it with v{active.number} needs at least {needed} approved "
            f"validation cases (paired test at alpha {policy.alpha}) and there {verb} {n_validation}; the "
            "model it makes stays a candidate that cannot be promoted"
        )
    problem = (
        "" if n_train else "No approved mask in the train split yet: approve some cases before adapting."
    )
    return RoundPlan(requested, trains, start, n_train, n_validation, judged, judgement, problem)


def _lineage(version: ModelVersion, by_id: dict[int, ModelVersion]) -> str:
    names, seen, current = [], set(), version
    while current is not None and current.id not in seen:
        seen.add(current.id)
        names.append(f"v{current.number}")
        current = by_id.get(current.parent_id) if current.parent_id else None
    if len(names) > LINEAGE_SHOWN:
        names = names[: LINEAGE_SHOWN - 1] + ["…", names[-1]]
    return " ← ".join(names)


def model_version_rows(*, project: Project) -> list[VersionRow]:
    """The project's model versions, newest first, with lineage and what may be done to each."""
    versions = list(
        ModelVersion.objects.filter(project=project).defer("history", "validation").order_by("-number")
    )
    by_id = {v.id: v for v in versions}
    return [
        VersionRow(
            version=v,
            lineage=_lineage(v, by_id),
            approved=len(v.snapshot or []),
            can_promote=v.state == ModelVersion.State.CANDIDATE and bool(v.gate.get("promotable")),
            can_rollback=v.state != ModelVersion.State.ACTIVE and v.activated_at is not None,
        )
        for v in versions
    ]


def model_version_get(*, project: Project, version_id: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, pk=version_id).first()


@dataclass(frozen=True)
class CurvePoint:
    """One model version on the learning curve."""

    number: int
    approved: int
    dice: float
    state: str


def learning_curve(*, project: Project) -> list[CurvePoint]:
    """Validation Dice against approved masks learned from, one point per validated version of the
    native net (a LiteMedSAM version's Dice is after a box: another measure, not on this curve)."""
    rows = (
        ModelVersion.objects.filter(
            project=project, model=ModelVersion.Model.NATIVE3D, validation_dice__isnull=False
        )
        .order_by("number")
        .values_list("number", "snapshot", "validation_dice", "state")
    )
    return [CurvePoint(n, len(snapshot or []), dice, state) for n, snapshot, dice, state in rows]


@dataclass(frozen=True)
class Activation:
    """A model version becoming the active one (a promotion or a rollback)."""

    at: datetime
    number: int
    action: str  # "promoted" or "rolled back to"


def model_activations(*, project: Project) -> list[Activation]:
    """Every time a version of the project became active, oldest first (from the audit log; a version
    activated without an audit event counts once, at its ``activated_at``)."""
    numbers = dict(ModelVersion.objects.filter(project=project).values_list("id", "number"))
    events = AuditEvent.objects.filter(
        object_type=ModelVersion._meta.label_lower,
        object_id__in=[str(i) for i in numbers],
        action__in=("model.promote", "model.rollback"),
    ).values_list("at", "object_id", "action")
    found = [
        Activation(at, numbers[int(oid)], "promoted" if action == "model.promote" else "rolled back to")
        for at, oid, action in events
    ]
    logged = {a.number for a in found}
    found += [
        Activation(at, number, "activated")
        for number, at in ModelVersion.objects.filter(
            project=project, activated_at__isnull=False
        ).values_list("number", "activated_at")
        if number not in logged
    ]
    return sorted(found, key=lambda a: a.at)


# ---- jobs -----------------------------------------------------------------------------------------


def jobs_recent(*, project: Project, limit: int = 20) -> QuerySet[Job]:
    """The project's latest jobs, newest first."""
    return Job.objects.filter(project=project).select_related("created_by").order_by("-id")[:limit]


def adaptation_unfinished(*, project: Project) -> Job | None:
    """The adaptation round queued or running for ``project`` (a new request joins it), if any."""
    return Job.objects.filter(project=project, kind=Job.Kind.ADAPT, state__in=Job.UNFINISHED).first()


def job_get(*, job_id: int) -> Job | None:
    return Job.objects.filter(pk=job_id).first()


def project_job_get(*, project: Project, job_id: int) -> Job | None:
    return Job.objects.filter(project=project, pk=job_id).first()


def peft_methods(*, model_kind: str = "native3d") -> list[tuple[str, str]]:
    """(name, summary) of the PEFT methods an adaptation round of `model_kind` networks may use."""
    from ml_worker.adaptation.peft import METHODS  # imports torch: only when asked

    return sorted((name, cls.summary) for name, cls in METHODS.get(model_kind, {}).items())


# ---- operations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerStatus:
    """Messages waiting per Celery queue and the workers that answered a ping. ``error`` says why the
    broker could not be asked (then ``queues`` and ``workers`` are empty)."""

    queues: dict[str, int]
    workers: list[str]
    error: str = ""


def broker_status(*, ping_timeout: float = 0.5, connect_timeout: float = 1.0) -> BrokerStatus:
    """Ask the broker (Redis) how many messages wait in each queue and which workers answer. Never
    raises for a broker that is down or slow: it says so in ``error``."""
    from kombu.exceptions import ChannelError

    from annotator.celery import app

    names = [q.name for q in app.conf.task_queues or ()] or [app.conf.task_default_queue]
    timeouts = {"socket_connect_timeout": connect_timeout, "socket_timeout": connect_timeout + ping_timeout}
    try:
        # The connection applies the transport's global_keyprefix (test runs) to every key it reads.
        with app.connection_for_read(transport_options=timeouts) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=connect_timeout)
            channel = conn.default_channel
            queues = {}
            for name in names:
                try:
                    queues[name] = channel.queue_declare(name, passive=True).message_count
                except ChannelError:  # the queue's list does not exist: nothing waits
                    queues[name] = 0
            answers = app.control.ping(timeout=ping_timeout, connection=conn)
    except Exception as exc:  # whatever the transport raises: the page must render and say so
        log.warning("broker status: %s: %s", type(exc).__name__, exc)
        return BrokerStatus(queues={}, workers=[], error=f"broker unreachable ({type(exc).__name__}: {exc})")
    workers = sorted(name for answer in answers for name in answer)
    return BrokerStatus(queues=queues, workers=workers)


# ---- annotation effort over time ------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovedCase:
    """An approved case and the effort of its whole version chain up to the approved version."""

    case_id: int
    approved_at: datetime
    seconds: float
    clicks: int
    strokes: int
    model_calls: int
    presegmented_by: str  # the model whose mask the annotator started from; "" for none


def approved_case_effort(*, project: Project) -> list[ApprovedCase]:
    """The project's approved cases in approval order, each with its summed annotation effort."""
    approvals: dict[int, tuple[int, datetime]] = {}
    for case_id, number, at in (
        Review.objects.filter(
            case__project=project, case__status=Case.Status.APPROVED, decision=Review.Decision.APPROVE
        )
        .order_by("case_id", "created_at", "id")
        .values_list("case_id", "version__number", "created_at")
    ):
        approvals[case_id] = (number, at)  # the last approval of a case is the one that holds
    chains: dict[int, list[dict]] = defaultdict(list)
    for row in (
        MaskVersion.objects.filter(case__project=project, case__status=Case.Status.APPROVED)
        .order_by("case_id", "number")
        .values("case_id", "number", "source", "model_version", *EFFORT_FIELDS)
    ):
        chains[row["case_id"]].append(row)
    out = []
    for case_id, (approved_number, at) in approvals.items():
        chain = [v for v in chains[case_id] if v["number"] <= approved_number]
        model = ""
        for v in chain:  # the model versions before the first human one: the last is what was edited
            if v["source"] != MaskVersion.Source.MODEL:
                break
            model = v["model_version"]
        out.append(
            ApprovedCase(
                case_id=case_id,
                approved_at=at,
                seconds=sum(v["seconds"] for v in chain),
                clicks=sum(v["clicks"] for v in chain),
                strokes=sum(v["strokes"] for v in chain),
                model_calls=sum(v["model_calls"] for v in chain),
                presegmented_by=model,
            )
        )
    return sorted(out, key=lambda c: (c.approved_at, c.case_id))


@dataclass(frozen=True)
class EffortGroup:
    """Approved cases of one period (or one pre-segmenting model) and their mean effort per case."""

    label: str
    cases: int
    seconds: float
    clicks: float
    strokes: float
    model_calls: float
    start: date | None = None
    notes: tuple[str, ...] = ()  # model changes in the period

    @property
    def minutes(self) -> float:
        return self.seconds / 60


def _group(label: str, cases: Sequence[ApprovedCase], **extra) -> EffortGroup:
    n = len(cases)
    means = {f: sum(getattr(c, f) for c in cases) / n for f in EFFORT_FIELDS}
    return EffortGroup(label=label, cases=n, **means, **extra)


def effort_by_week(cases: Iterable[ApprovedCase], activations: Iterable[Activation]) -> list[EffortGroup]:
    """Per ISO week with approvals or model changes, oldest first: mean effort per approved case."""
    weeks: dict[tuple[int, int], list[ApprovedCase]] = defaultdict(list)
    changes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for case in cases:
        weeks[case.approved_at.isocalendar()[:2]].append(case)
    for activation in activations:
        changes[activation.at.isocalendar()[:2]].append(f"v{activation.number} {activation.action}")
    groups = []
    for year, week in sorted(set(weeks) | set(changes)):
        in_week = weeks.get((year, week), [])
        label, start = f"{year}-W{week:02d}", date.fromisocalendar(year, week, 1)
        notes = tuple(changes.get((year, week), ()))
        if in_week:
            groups.append(_group(label, in_week, start=start, notes=notes))
        else:
            groups.append(EffortGroup(label, 0, 0.0, 0.0, 0.0, 0.0, start=start, notes=notes))
    return groups


def effort_by_model(cases: Iterable[ApprovedCase], *, project: Project) -> list[EffortGroup]:
    """Mean effort per approved case by the model that pre-segmented it (from scratch first, then by
    model version): the direct evidence of whether a newer model saves work."""
    numbers = {
        v.label: v.number for v in ModelVersion.objects.filter(project=project).only("project", "number")
    }
    by_model: dict[str, list[ApprovedCase]] = defaultdict(list)
    for case in cases:
        by_model[case.presegmented_by].append(case)

    def split(label: str) -> tuple[str, bool]:  # (the native version's label, LiteMedSAM on its boxes)
        base = label.removesuffix(SECOND_OPINION_SUFFIX)
        return base, base != label

    def order(label: str) -> tuple[int, int, str]:
        base, boxed = split(label)
        if not label:
            return (0, 0, "")
        return (1, numbers[base], str(boxed)) if base in numbers else (2, 0, label)

    def name(label: str) -> str:
        base, boxed = split(label)
        if base not in numbers:
            return label or "none (drawn from scratch)"
        return f"v{numbers[base]}" + (" + LiteMedSAM on its boxes" if boxed else "")

    return [_group(name(label), by_model[label]) for label in sorted(by_model, key=order)]


def approved_count(*, project: Project) -> int:
    return Case.objects.filter(project=project, status=Case.Status.APPROVED).count()


@dataclass(frozen=True)
class InteractiveRoute:
    """Which model answers a project's boxes and clicks: plain values a Celery message can carry."""

    model: str  # "native3d" or "litemedsam" (an adapted version); no route: the bundled LiteMedSAM
    version_id: int
    number: int
    weights: str  # relative to MEDIA_ROOT
    sha256: str
    modality: str

    def as_message(self) -> dict:
        return {
            "model": self.model,
            "version_id": self.version_id,
            "number": self.number,
            "weights": self.weights,
            "sha256": self.sha256,
            "modality": self.modality,
        }


def _mean_curve(curve) -> float | None:
    values = [float(v) for v in curve or ()]
    return sum(values) / len(values) if values else None


def _litemedsam_does_better(sam: ModelVersion, native: ModelVersion) -> bool:
    """Whether LiteMedSAM version `sam` did better than native version `native` on the interactive curve
    (mean Dice over the box and the corrective clicks) of the same validation cases and prompts: the
    LiteMedSAM round scores the active native net beside its candidate. Measured against another native
    version (one promoted since), or not at all: no, the native net answers (it edits the mask)."""
    interactive = (sam.gate or {}).get("interactive") or {}
    rival = interactive.get("rival") or {}
    if rival.get("model") != ModelVersion.Model.NATIVE3D or rival.get("number") != native.number:
        return False
    ours, theirs = _mean_curve(interactive.get("candidate")), _mean_curve(rival.get("curve"))
    return ours is not None and theirs is not None and ours > theirs


def interactive_route(*, project: Project) -> InteractiveRoute | None:
    """The project's best interactive model, read at every request (a promotion or a rollback takes
    effect at the next click): its active LiteMedSAM version where that did better than the active
    native net on the interactive curve of the same validation cases (or where there is no native net),
    else the active native version (trained with clicks placed on its own errors, it edits the
    annotator's mask); None without either: the bundled LiteMedSAM answers."""
    active = {
        v.model: v
        for v in ModelVersion.objects.filter(project=project, state=ModelVersion.State.ACTIVE).exclude(
            weights_path=""
        )
    }
    native, sam = active.get(ModelVersion.Model.NATIVE3D), active.get(ModelVersion.Model.LITEMEDSAM)
    version = native
    if sam is not None and (native is None or _litemedsam_does_better(sam, native)):
        version = sam
    if version is None:
        return None
    return InteractiveRoute(
        model=version.model,
        version_id=version.id,
        number=version.number,
        weights=version.weights_path,
        sha256=version.weights_sha256,
        modality=project.modality or "MR",
    )
