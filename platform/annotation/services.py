"""Writes on projects, cases, locks, mask versions and reviews. Each checks first, then writes in one
transaction under the case's row lock, and leaves an audit event; a user's error changes nothing."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Model, OuterRef, Q
from django.utils import timezone

from accounts.models import User
from annotation import dispatch, interactive
from annotation.errors import (
    CaseLockedError,
    CaseStateError,
    ModelTimeoutError,
    SelfReviewError,
    StaleVersionError,
)
from annotation.masks import delta_apply, mask_read, mask_write
from annotation.models import AuditEvent, Case, CaseLock, LabelClass, MaskVersion, Project, Review
from common.exceptions import ApplicationError, TransientError
from common.media import media_path
from learning import selectors as learning_selectors
from ml_worker.inference.prompts import PromptError, prompts_from_json
from ml_worker.inference.slice_store import request_claim, request_refresh, request_release
from studies.models import Series, Volume

logger = logging.getLogger(__name__)

# Split fractions by a volume's hash bucket (0..99): train below 70, validation below 85, test above.
SPLIT_BUCKETS = ((70, Case.Split.TRAIN), (85, Case.Split.VALIDATION), (100, Case.Split.TEST))
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class LabelSpec:
    value: int
    name: str
    colour: str


@dataclass(frozen=True)
class Effort:
    """Work since the parent version, as the client counted it."""

    seconds: float = 0.0
    clicks: int = 0
    strokes: int = 0
    model_calls: int = 0


@dataclass(frozen=True)
class CaseScore:
    """A case's place in the worklist; ``inputs`` (the model's scores and embedding of the volume) are
    kept so a later ranking can reuse them; None keeps what is stored."""

    case_id: int
    score: float
    reason: str = ""
    inputs: dict | None = None


def audit_event(*, actor: User | None, action: str, obj: Model, **details) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor, action=action, object_type=obj._meta.label_lower, object_id=str(obj.pk), details=details
    )


@transaction.atomic
def project_create(
    *,
    name: str,
    labels: Sequence[LabelSpec],
    user: User | None,
    modality: str = "",
    description: str = "",
    interactive_model: str = "",
    intake_series_description: str = "",
) -> Project:
    name = name.strip()
    if not name:
        raise ApplicationError("A project needs a name.")
    if Project.objects.filter(name=name).exists():
        raise ApplicationError(f"A project named '{name}' exists already.")
    if not labels:
        raise ApplicationError("A project needs at least one label class.")
    values = [label.value for label in labels]
    names = [label.name.strip() for label in labels]
    if any(not 1 <= v <= 255 for v in values) or len(set(values)) != len(values):
        raise ApplicationError(
            f"Label values must be unique and between 1 and 255 (0 is background), got {values}."
        )
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ApplicationError(f"Label names must be unique and not empty, got {names}.")
    bad = [label.colour for label in labels if not _COLOUR.match(label.colour)]
    if bad:
        raise ApplicationError(f"Colours are written #rrggbb, got {bad}.")
    project = Project.objects.create(
        name=name,
        modality=modality,
        description=description,
        interactive_model=interactive_model,
        intake_series_description=intake_series_description.strip(),
    )
    LabelClass.objects.bulk_create(
        LabelClass(project=project, value=s.value, name=n, colour=s.colour.lower())
        for s, n in zip(labels, names, strict=True)
    )
    audit_event(actor=user, action="project.create", obj=project, labels=[asdict(s) for s in labels])
    return project


def split_for(*, series_instance_uid: str, index: int) -> str:
    """The split of a volume: a pure function of its identity, so it is the same in every project and
    on every run (never re-drawn)."""
    bucket = int(hashlib.sha256(f"{series_instance_uid}/{index}".encode()).hexdigest(), 16) % 100
    return next(split for upper, split in SPLIT_BUCKETS if bucket < upper)


def read_twice(*, series_instance_uid: str, index: int, percent: int) -> bool:
    """Whether a volume is one of the ``percent`` % a project reads twice: a pure function of its
    identity (like the split, but drawn apart from it), so raising the share only adds volumes."""
    bucket = int(hashlib.sha256(f"double-reading/{series_instance_uid}/{index}".encode()).hexdigest(), 16)
    return bucket % 100 < percent


@transaction.atomic
def project_volumes_add(*, project: Project, volumes: Iterable[Volume], user: User | None) -> int:
    """Add volumes to a project as new cases (volumes already in it are left alone), two cases (readings
    1 and 2) for the volumes the project reads twice; returns how many volumes were added."""
    volumes = list(volumes)
    present = set(
        Case.objects.filter(project=project, volume__in=volumes).values_list("volume_id", flat=True)
    )
    new = []
    for v in volumes:
        if v.id in present:
            continue
        uid = v.series.series_instance_uid
        split = split_for(series_instance_uid=uid, index=v.index)
        twice = read_twice(series_instance_uid=uid, index=v.index, percent=project.double_reading_percent)
        new += [Case(project=project, volume=v, split=split, reading=r) for r in ((1, 2) if twice else (1,))]
    Case.objects.bulk_create(new, ignore_conflicts=True)
    new = [c for c in new if c.reading == 1]
    if new:
        audit_event(
            actor=user, action="project.add_volumes", obj=project, volume_ids=[c.volume_id for c in new]
        )
    return len(new)


@transaction.atomic
def project_intake_rule_set(*, project: Project, series_description: str, user: User | None) -> int:
    """Change which new volumes join the project by themselves (series description contains
    `series_description`, any case, and the modality is the project's; empty: none). The ready volumes
    that match join at once; returns how many did. Cases already in the project stay."""
    rule = series_description.strip()
    limit = Project._meta.get_field("intake_series_description").max_length
    if len(rule) > limit:
        raise ApplicationError(f"The intake rule is at most {limit} characters long, got {len(rule)}.")
    before = project.intake_series_description
    project.intake_series_description = rule
    project.save(update_fields=["intake_series_description"])
    audit_event(actor=user, action="project.intake", obj=project, before=before, after=rule)
    return project_intake(project=project)


def project_intake(*, project: Project) -> int:
    """Add the ready volumes that match the project's intake rule (series description and modality) and
    are not in it yet; returns how many were added. A project without a rule takes nothing."""
    if not project.intake_series_description:
        return 0
    volumes = (
        Volume.objects.filter(
            series__status=Series.Status.READY,
            series__gone_at__isnull=True,
            series__description__icontains=project.intake_series_description,
        )
        .exclude(cases__project=project)
        # a series of uneven spacing is annotated on its resampled volume, not on its exact slabs
        .exclude(
            Q(source_slices=[])
            & Exists(Volume.objects.filter(series=OuterRef("series")).exclude(source_slices=[]))
        )
    )
    if project.modality:
        volumes = volumes.filter(series__modality=project.modality)
    return project_volumes_add(project=project, volumes=volumes.select_related("series"), user=None)


@transaction.atomic
def case_scores_set(*, project: Project, scores: Sequence[CaseScore], model: str, version: str) -> int:
    """Record the active-learning scores of one scoring run (the worklist order)."""
    cases = Case.objects.in_bulk([s.case_id for s in scores])
    updated = []
    for s in scores:
        case = cases.get(s.case_id)
        if case is None or case.project_id != project.id:
            raise ApplicationError(f"Case {s.case_id} is not in project '{project.name}'.")
        case.score, case.score_reason, case.score_model, case.score_version = (
            s.score,
            s.reason,
            model,
            version,
        )
        if s.inputs is not None:
            case.score_inputs = s.inputs
        updated.append(case)
    Case.objects.bulk_update(
        updated, ["score", "score_reason", "score_model", "score_version", "score_inputs"], batch_size=1000
    )
    audit_event(
        actor=None, action="project.score", obj=project, model=model, version=version, cases=len(updated)
    )
    worklist_embeddings_prefetch(project=project)
    return len(updated)


def _lease() -> timedelta:
    return timedelta(seconds=settings.ANNOTATION_LOCK_LEASE_SECONDS)


def _locked_case(case: Case) -> Case:
    """Re-read the case under its row lock: every write on a case goes through here first."""
    return Case.objects.select_for_update(of=("self",)).select_related("project", "volume").get(pk=case.pk)


def _holding(case: Case, user: User) -> CaseLock:
    """The caller's lock on the case (renewed), or CaseLockedError. A lease of the caller's that ran out
    still counts while nobody else has taken the case: saving late loses nothing."""
    lock = CaseLock.objects.filter(case=case).select_related("user").first()
    if lock is None:
        raise CaseLockedError("You do not hold this case (any more): take it again to go on.")
    if lock.user_id != user.id:
        raise CaseLockedError(
            f"{lock.user.username} holds this case now (until {lock.expires_at:%Y-%m-%d %H:%M:%S} UTC).",
            extra={"holder": lock.user.username, "expires_at": lock.expires_at.isoformat()},
        )
    lock.expires_at = timezone.now() + _lease()
    lock.save(update_fields=["expires_at"])
    return lock


def _editable(case: Case) -> None:
    if case.status == Case.Status.APPROVED:
        raise CaseStateError("This case is approved: its mask is frozen.")
    if case.status == Case.Status.ADJUDICATED:
        raise CaseStateError("This reading is closed: a reviewer kept the other reading or a merge.")
    if case.status == Case.Status.SUBMITTED:
        raise CaseStateError("This case is submitted and waits for review.")


def _other_reading(case: Case):
    """The other reading of a volume read twice (a queryset: empty for a volume read once)."""
    return Case.objects.filter(project_id=case.project_id, volume_id=case.volume_id).exclude(pk=case.pk)


@transaction.atomic
def case_take(*, case: Case, user: User) -> CaseLock:
    """Lock the case for ``user`` for one lease (renewing it if they hold it already). Refuses while
    someone else's lease runs; an expired lease is free to take."""
    case = _locked_case(case)
    _editable(case)
    other = _other_reading(case).filter(assignee=user).first()
    if other is not None:
        raise CaseStateError(
            f"You read this volume already (case {other.id}, reading {other.reading}): the other reading "
            "must be someone else's, so that the two are independent."
        )
    now = timezone.now()
    lock = CaseLock.objects.filter(case=case).select_related("user").first()
    if lock is not None and lock.user_id != user.id and lock.expires_at > now:
        raise CaseLockedError(
            f"{lock.user.username} holds this case until {lock.expires_at:%Y-%m-%d %H:%M:%S} UTC.",
            extra={"holder": lock.user.username, "expires_at": lock.expires_at.isoformat()},
        )
    previous = lock.user.username if lock is not None and lock.user_id != user.id else None
    lock, _ = CaseLock.objects.update_or_create(
        case=case, defaults={"user": user, "taken_at": now, "expires_at": now + _lease()}
    )
    if case.assignee_id != user.id or case.status in (Case.Status.NEW, Case.Status.REJECTED):
        case.assignee = user
        case.status = Case.Status.IN_PROGRESS
        case.save(update_fields=["assignee", "status", "updated_at"])
    audit_event(actor=user, action="case.take", obj=case, expired_holder=previous)
    # Embeddings for the model tools, now that someone works on it, and for the next cases of the
    # worklist (minutes per volume on a CPU: not for a whole project up front); a box before they are
    # complete is answered anyway, its slice encoded first.
    if _litemedsam_answers(case.project):
        volume_embeddings_request(volumes=[case.volume])
        worklist_embeddings_prefetch(project=case.project)
    return lock


@transaction.atomic
def case_heartbeat(*, case: Case, user: User) -> CaseLock:
    """Extend the caller's lease. Not audited: it runs every few seconds per open case."""
    return _holding(_locked_case(case), user)


@transaction.atomic
def case_release(*, case: Case, user: User) -> None:
    """Give the case back. Its holder may; so may a user with ``release_any_lock`` (an admin), whoever
    holds it. Releasing a case nobody holds does nothing."""
    case = _locked_case(case)
    lock = CaseLock.objects.filter(case=case).select_related("user").first()
    if lock is None:
        return
    if lock.user_id != user.id and not user.has_perm("annotation.release_any_lock"):
        raise CaseLockedError(f"{lock.user.username} holds this case; only they or an admin can release it.")
    lock.delete()
    audit_event(actor=user, action="case.release", obj=case, holder=lock.user.username)


@transaction.atomic
def next_case_take(*, project: Project, user: User) -> Case | None:
    """Take the highest-scored case of the project that is free for ``user``: new ones, and the user's
    own unfinished or rejected ones; never one someone else holds. None when there is none.

    Concurrent callers get different cases: rows another transaction is taking are skipped.
    """
    now = timezone.now()
    candidate = (
        Case.objects.filter(project=project)
        .filter(
            Q(status=Case.Status.NEW)
            | Q(status__in=[Case.Status.IN_PROGRESS, Case.Status.REJECTED], assignee=user)
        )
        .filter(Q(lock__isnull=True) | Q(lock__expires_at__lte=now) | Q(lock__user=user))
        .exclude(  # the other reading of a volume this user reads
            Exists(
                Case.objects.filter(project=project, volume=OuterRef("volume"), assignee=user).exclude(
                    pk=OuterRef("pk")
                )
            )
        )
        .order_by("-score", "reading", "-id")  # of a volume read twice, the first reading first
        .select_for_update(skip_locked=True, of=("self",))
        .first()
    )
    if candidate is None:
        return None
    case_take(case=candidate, user=user)
    candidate.refresh_from_db()
    return candidate


def _check_labels(mask: np.ndarray, *, project: Project) -> None:
    counts = np.bincount(mask.ravel(), minlength=256)
    allowed = {0, *project.labels.values_list("value", flat=True)}
    unknown = sorted(set(np.flatnonzero(counts).tolist()) - allowed)
    if unknown:
        raise ApplicationError(
            f"The mask holds values {unknown} that are not classes of this project "
            f"(known: {sorted(allowed - {0})}; 0 is background).",
            extra={"unknown_values": unknown},
        )


def _as_labelmap(mask: np.ndarray, *, volume: Volume) -> np.ndarray:
    mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(volume.shape):
        raise ApplicationError(
            f"The mask is {tuple(mask.shape)} voxels but the volume is {tuple(volume.shape)}."
        )
    if mask.dtype.kind not in "uib" or (mask.size and (mask.min() < 0 or mask.max() > 255)):
        raise ApplicationError(f"A mask holds integer labels 0..255, got dtype {mask.dtype}.")
    return mask.astype(np.uint8, copy=False)


def _head(case: Case) -> MaskVersion | None:
    return case.versions.order_by("-number").first()


def _version_store(
    *,
    case: Case,
    mask: np.ndarray,
    parent: MaskVersion | None,
    author: User | None,
    source: str,
    effort: Effort,
    model_version: str = "",
) -> MaskVersion:
    """File first, then the row: a write that fails leaves no row behind (and a row never lacks its file)."""
    _check_labels(mask, project=case.project)
    path, sha256 = mask_write(mask, affine=np.asarray(case.volume.affine))
    return MaskVersion.objects.create(
        case=case,
        number=0 if parent is None else parent.number + 1,
        parent=parent,
        author=author,
        source=source,
        model_version=model_version,
        path=path,
        sha256=sha256,
        **asdict(effort),
    )


@transaction.atomic
def presegmentation_create(*, case: Case, mask: np.ndarray, model_version: str) -> MaskVersion:
    """A model's mask for a case nobody has worked on: version 0, or, when a newer model pre-segments
    it again, the next version on top of the previous model's. Running it again with the same mask
    returns the same version.

    Raises:
        CaseStateError: a person has taken or edited the case (a model never writes over human work).
    """
    case = _locked_case(case)
    mask = _as_labelmap(mask, volume=case.volume)
    head = _head(case)
    if head is not None:
        if head.source != MaskVersion.Source.MODEL or case.status != Case.Status.NEW:
            raise CaseStateError(
                f"Case {case.id} has human work; a model only pre-segments cases nobody has worked on."
            )
        _, sha256 = mask_write(mask, affine=np.asarray(case.volume.affine))
        if sha256 == head.sha256:
            return head
    version = _version_store(
        case=case,
        mask=mask,
        parent=head,
        author=None,
        source=MaskVersion.Source.MODEL,
        effort=Effort(),
        model_version=model_version,
    )
    audit_event(actor=None, action="version.presegment", obj=version, model_version=model_version)
    return version


@transaction.atomic
def mask_version_create(
    *,
    case: Case,
    user: User,
    parent: MaskVersion | None,
    mask: np.ndarray | None = None,
    delta: np.ndarray | None = None,
    effort: Effort = Effort(),
) -> MaskVersion:
    """Save the caller's edit as a new version on top of ``parent``, which must be the case's head
    (else StaleVersionError naming the head: never a silent overwrite). Give either the full ``mask``
    on the volume's grid or a ``delta`` against the parent (runs from annotation.masks.delta_parse).

    The source is ``edited`` when the chain started from a model or a model helped, else ``human``.
    """
    if (mask is None) == (delta is None):
        raise ApplicationError("Send either a full label map or a delta against the parent, not both.")
    if min(asdict(effort).values()) < 0:
        raise ApplicationError(f"Effort counts cannot be negative, got {asdict(effort)}.")
    case = _locked_case(case)
    _editable(case)
    if parent is not None and parent.case_id != case.id:
        raise ApplicationError(f"Version {parent.id} is not a version of case {case.id}.")
    head = _head(case)
    if (parent and parent.id) != (head and head.id):
        raise StaleVersionError(head)
    _holding(case, user)
    if delta is not None:
        if parent is None:
            raise ApplicationError("A delta needs a parent version; send the full label map instead.")
        mask = delta_apply(mask_read(parent.path), delta)
    mask = _as_labelmap(mask, volume=case.volume)
    model_helped = effort.model_calls > 0 or (
        parent is not None and parent.source in (MaskVersion.Source.MODEL, MaskVersion.Source.EDITED)
    )
    version = _version_store(
        case=case,
        mask=mask,
        parent=parent,
        author=user,
        source=MaskVersion.Source.EDITED if model_helped else MaskVersion.Source.HUMAN,
        effort=effort,
    )
    audit_event(
        actor=user,
        action="version.create",
        obj=version,
        case=case.id,
        number=version.number,
        **asdict(effort),
    )
    return version


@transaction.atomic
def case_submit(*, case: Case, user: User, version: MaskVersion) -> Case:
    """Hand the case to review with ``version``, which must be the head (what the annotator last saw)."""
    case = _locked_case(case)
    _editable(case)
    head = _head(case)
    if head is None:
        raise CaseStateError("There is no mask to submit yet: save one first.")
    if version.id != head.id:
        raise StaleVersionError(head)
    lock = _holding(case, user)
    lock.delete()
    case.status = Case.Status.SUBMITTED
    case.save(update_fields=["status", "updated_at"])
    audit_event(actor=user, action="case.submit", obj=case, version=version.id, number=version.number)
    return case


def _own_work_check(*, case: Case, user: User, override_reason: str) -> str:
    """A reviewer may not approve work they did (the case's assignee, or an author of one of its
    versions). An admin (``approve_own_work``) may, with a reason; returns the reason when it is used.

    Raises:
        SelfReviewError: their own work and no reason, or a reason without the permission.
    """
    reason = override_reason.strip()
    authored = sorted(v.display_number for v in case.versions.filter(author=user).only("number", "case_id"))
    if case.assignee_id != user.id and not authored:
        return ""
    can_override = user.has_perm("annotation.approve_own_work")
    what = f"versions {', '.join(map(str, authored))}" if authored else "this case"
    if not reason:
        hint = (
            " As an admin you may approve it anyway, giving a reason (it is audited)." if can_override else ""
        )
        raise SelfReviewError(
            f"You annotated {what}: another reviewer approves it.{hint}", extra={"can_override": can_override}
        )
    if not can_override:
        raise SelfReviewError(
            f"You annotated {what}: only an admin may approve their own work.", extra={"can_override": False}
        )
    return reason


@transaction.atomic
def case_review(
    *,
    case: Case,
    user: User,
    version: MaskVersion,
    decision: str,
    comment: str = "",
    override_reason: str = "",
) -> Review:
    """Approve or reject the submitted version. Approval freezes the case and queues its DICOM SEG export
    (after commit); rejection returns it to its annotator with the comment. Nobody approves their own
    work, except an admin giving ``override_reason`` (stored on the review and audited).

    Raises:
        CaseStateError, StaleVersionError: the case is not submitted, or ``version`` is not its head.
        SelfReviewError: the reviewer annotated it (see ``_own_work_check``).
    """
    case = _locked_case(case)
    if case.status != Case.Status.SUBMITTED:
        raise CaseStateError(
            f"Only a submitted case can be reviewed; this one is {case.get_status_display()}."
        )
    head = _head(case)
    if version.id != head.id:
        raise StaleVersionError(head)
    if decision not in Review.Decision.values:
        raise ApplicationError(f"A decision is one of {Review.Decision.values}, got '{decision}'.")
    comment = comment.strip()
    if decision == Review.Decision.REJECT and not comment:
        raise ApplicationError("Say why you reject it: the annotator gets your comment.")
    approve = decision == Review.Decision.APPROVE
    if approve and _other_reading(case).exists():
        raise CaseStateError(
            "This volume is read twice: compare the two readings and keep one or merge them "
            f"(/cases/{case.id}/compare/).",
            extra={"compare": f"/cases/{case.id}/compare/"},
        )
    override = _own_work_check(case=case, user=user, override_reason=override_reason) if approve else ""
    review = Review.objects.create(
        case=case,
        version=version,
        reviewer=user,
        decision=decision,
        comment=comment,
        override_reason=override,
        export_status=Review.Export.PENDING if approve else Review.Export.NONE,
    )
    case.status = Case.Status.APPROVED if approve else Case.Status.REJECTED
    case.save(update_fields=["status", "updated_at"])
    if override:
        audit_event(actor=user, action="case.approve_own_work", obj=case, version=version.id, reason=override)
    audit_event(actor=user, action=f"case.{decision}", obj=case, version=version.id, comment=comment)
    if approve:
        # robust: a broker outage must not turn a committed approval into an error page; the review
        # then stays "pending" and the tick queues it again (review_exports_requeue).
        transaction.on_commit(lambda: review_export_queue(review_id=review.id), robust=True)
    return review


# A pending export with no sign of life (queued, or a failed try that will be retried) for this long
# is taken to be lost (queued while the broker was down, or a broker restarted without persistence) and
# is queued again. Longer than the export task's longest retry backoff (15 min).
EXPORT_REQUEUE_AFTER = timedelta(minutes=20)
_EXPORT_ALIVE_ACTIONS = ("review.export_queued", "review.export_retry")


def review_export_queue(*, review_id: int) -> None:
    """Send a review's DICOM SEG export to the cpu queue, and record that it was sent (the mark the tick
    looks for). Raises whatever the broker raises when it is down; nothing is recorded then."""
    dispatch.review_seg_export(review_id)
    AuditEvent.objects.create(
        actor=None, action="review.export_queued", object_type="annotation.review", object_id=str(review_id)
    )


def review_exports_requeue(*, now=None) -> list[int]:
    """What the tick runs: queue again every pending export that has shown no sign of life for
    EXPORT_REQUEUE_AFTER; returns their review ids. Safe while the first message still waits in the
    queue: the export is idempotent and a done one returns at once."""
    from annotation.selectors import reviews_export_stale

    stale = reviews_export_stale(
        idle_since=(now or timezone.now()) - EXPORT_REQUEUE_AFTER, alive_actions=_EXPORT_ALIVE_ACTIONS
    )
    for review_id in stale:
        review_export_queue(review_id=review_id)
    return stale


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def review_seg_export(*, review_id: int) -> Review:
    """Send an approved version to its volume's PACS as DICOM SEG and record the outcome on the review.
    Safe to run twice (the SEG's UIDs derive from the mask). Raises TransientError to be retried."""
    from ml_worker.io.seg import SegmentSpec
    from pacs.services.export import volume_seg_export

    review = Review.objects.select_related(
        "version", "case__project", "case__volume__series__study__source"
    ).get(pk=review_id)
    if review.decision != Review.Decision.APPROVE or review.export_status == Review.Export.DONE:
        return review
    case, version = review.case, review.version
    mask = mask_read(version.path)
    present = set(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
    labels = [label for label in case.project.labels.all() if label.value in present] or list(
        case.project.labels.all()
    )
    segments = [SegmentSpec(label=label.value, name=label.name, rgb=_rgb(label.colour)) for label in labels]
    try:
        export = volume_seg_export(
            volume=case.volume,
            mask=mask,
            segments=segments,
            series_description=f"{case.project.name} v{version.display_number}"[:64],
        )
    except TransientError as exc:
        Review.objects.filter(pk=review.pk).update(export_error=f"{exc.message} (will retry)")
        audit_event(actor=None, action="review.export_retry", obj=review, error=exc.message)
        raise
    except ApplicationError as exc:
        Review.objects.filter(pk=review.pk).update(
            export_status=Review.Export.FAILED, export_error=exc.message
        )
        audit_event(actor=None, action="review.export_failed", obj=review, error=exc.message)
        review.refresh_from_db()
        return review
    Review.objects.filter(pk=review.pk).update(
        export_status=Review.Export.DONE,
        export_error="",
        seg_series_instance_uid=export.series_instance_uid,
        seg_sop_instance_uid=export.sop_instance_uid,
        exported_at=timezone.now(),
    )
    audit_event(actor=None, action="review.export", obj=review, sop_instance_uid=export.sop_instance_uid)
    review.refresh_from_db()
    return review


# ---- model-assisted editing ------------------------------------------------------------------------


@dataclass(frozen=True)
class InteractiveAnswer:
    label: int
    mask_gzip: bytes  # gzip of the 0/1 voxels in NIfTI order (annotation.masks' wire order)
    seconds: float  # in the worker
    incremental: bool
    model: str
    model_version: int | None  # the project's model version that answered; None: LiteMedSAM
    slices_ready: int  # slices of the structure's slab (the box's extent along the slice axis) encoded
    slices_total: int
    pending: bool  # the mask will grow as more slices are encoded: send the same request again


def volume_embeddings_request(*, volumes: Iterable[Volume]) -> None:
    """Queue the interactive model's embeddings of volumes (queue gpu), after commit: one task per
    volume, never a queue of duplicates (a claim file per volume in the embeddings folder, held while
    the task is queued or running; one not refreshed for ``EMBEDDINGS_CLAIM_STALE_SECONDS`` is a lost
    task and is taken over). The task skips a volume whose embeddings are complete."""

    def enqueue(volume_id: int, sha256: str) -> None:
        stale = float(settings.EMBEDDINGS_CLAIM_STALE_SECONDS)
        if request_claim(interactive.embeddings_dir(), sha256, stale_seconds=stale):
            dispatch.volume_embeddings_compute(volume_id)

    for volume in volumes:
        transaction.on_commit(lambda vid=volume.id, sha=volume.sha256: enqueue(vid, sha))


def _litemedsam_answers(project: Project) -> bool:
    """Whether the project's boxes and clicks go to LiteMedSAM (bundled or adapted), the only model that
    needs slice embeddings: once its native net answers, encoding would cost minutes of a CPU per
    volume beside the clicks and the training, for nothing."""
    route = learning_selectors.interactive_route(project=project)
    return route is None or route.model == "litemedsam"


def worklist_embeddings_prefetch(*, project: Project) -> None:
    """Embeddings ahead for the top ``INTERACTIVE_PREFETCH_CASES`` new, free cases of the worklist (in
    the order `next_case_take` hands them out), so the next case taken answers its boxes at once; none
    where LiteMedSAM does not answer the project's prompts."""
    count = settings.INTERACTIVE_PREFETCH_CASES
    if count < 1 or not _litemedsam_answers(project):
        return
    now = timezone.now()
    cases = (
        Case.objects.filter(project=project, status=Case.Status.NEW)
        .filter(Q(lock__isnull=True) | Q(lock__expires_at__lte=now))
        .select_related("volume")
        .order_by("-score", "reading", "-id")[:count]
    )
    volume_embeddings_request(volumes=[case.volume for case in cases])


def volume_embeddings_compute(*, volume_id: int) -> bool:
    """Worker side: encode a volume's slices not encoded yet (the prompted structure's slab first,
    outward from the prompted slice) unless none of its cases can be edited any more (submitted or
    approved meanwhile: minutes of a CPU nobody would use); True if any slice was encoded now. Keeps
    the volume's claim fresh while it runs and releases it when it ends."""
    volume = Volume.objects.get(pk=volume_id)
    directory = interactive.embeddings_dir()
    try:
        done = (Case.Status.SUBMITTED, Case.Status.APPROVED)
        if volume.cases.exists() and not volume.cases.exclude(status__in=done).exists():
            return False
        return interactive.segmenter().embed(
            media_path(volume.path),
            volume.sha256,
            progress=lambda _done, _total: request_refresh(directory, volume.sha256),
        )
    finally:
        request_release(directory, volume.sha256)


def interactive_segment(*, volume_id: int, request: dict, route: dict | None = None) -> dict:
    """Worker side: one model call. Returns ``{"answer": file name, ...}`` (with how many slices of the
    structure's slab are encoded, and whether the mask will still grow), or ``{"error": message}`` for
    prompts the model cannot take: never an exception, so the web process can say what happened.

    `route` (``learning.selectors.InteractiveRoute.as_message``) names the project's adapted model
    that answers instead of the bundled LiteMedSAM: its native net, or a LiteMedSAM version (over the
    same embeddings); None: the bundled LiteMedSAM."""
    from ml_worker.inference.interactive import MODEL_ID
    from ml_worker.io.volume import voxel_spacing
    from ml_worker.models.checkpoints import CheckpointError

    volume = Volume.objects.get(pk=volume_id)
    if route is not None and route["model"] == "native3d":
        return _native_segment(volume, request, route)
    try:
        label, box, clicks = prompts_from_json(request, shape=tuple(volume.shape))
        answer = interactive.segmenter().segment(
            volume_path=media_path(volume.path),
            volume_sha256=volume.sha256,
            shape=tuple(volume.shape),
            label=label,
            box=box,
            clicks=clicks,
            weights=None if route is None else media_path(route["weights"]),
            weights_sha256=None if route is None else route["sha256"],
            spacing=voxel_spacing(volume.affine),
        )
    except PromptError as exc:
        return {"error": str(exc)}
    except CheckpointError as exc:  # an adapted LiteMedSAM version (route) whose file is gone or damaged
        logger.error("model version %s cannot be loaded: %s", route["version_id"], exc)
        return {"error": f"The project's LiteMedSAM (version {route['number']}) cannot be loaded: {exc}"}
    return {
        "answer": interactive.answer_write(answer.mask),
        "seconds": round(answer.seconds, 4),
        "incremental": answer.incremental,
        "model": MODEL_ID if route is None else f"litemedsam/{route['sha256'][:16]}",
        "model_version": None if route is None else route["number"],
        "slices_ready": answer.ready.ready,
        "slices_total": answer.ready.total,
        "pending": answer.pending,
    }


def _native_segment(volume: Volume, request: dict, route: dict) -> dict:
    from ml_worker.models.checkpoints import CheckpointError

    try:
        label, box, clicks = prompts_from_json(request, shape=tuple(volume.shape))
        answer = interactive.native_segmenter().segment(
            weights_path=media_path(route["weights"]),
            weights_sha256=route["sha256"],
            volume_path=media_path(volume.path),
            volume_sha256=volume.sha256,
            modality=route["modality"],
            label=label,
            box=box,
            clicks=clicks,
        )
    except PromptError as exc:
        return {"error": str(exc)}
    except CheckpointError as exc:
        logger.error("model version %s cannot be loaded: %s", route["version_id"], exc)
        return {"error": f"The project's model (version {route['number']}) cannot be loaded: {exc}"}
    return {
        "answer": interactive.answer_write(answer.mask),
        "seconds": round(answer.seconds, 4),
        "incremental": answer.incremental,
        "model": f"native3d/{route['sha256'][:16]}",
        "model_version": route["number"],
        "slices_ready": 0,
        "slices_total": 0,
        "pending": False,
    }


def case_interact(*, case: Case, user: User, request: dict) -> InteractiveAnswer:
    """A box and clicks on one class of a case the caller holds -> the model's mask for that class.

    The request carries the whole interaction for the class (its box and every click so far), so any
    interactive worker can answer it; the one that answered the last request only decodes the new click.
    On a volume whose embeddings are not complete the prompted slice is encoded first and answered at
    once (``pending``: the mask grows as the rest of the slab arrives; the same request sent again
    returns it), and the volume's embeddings task is queued unless it is already.

    Raises:
        CaseLockedError, CaseStateError: the caller does not hold the case, or it is not editable.
        ApplicationError: malformed prompts, a prompt outside the volume, a class not in the project.
        ModelTimeoutError: no interactive worker answered in time.
    """
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    with transaction.atomic():
        case = _locked_case(case)
        _editable(case)
        _holding(case, user)
    volume = case.volume
    try:
        label, _, _ = prompts_from_json(request, shape=tuple(volume.shape))
    except PromptError as exc:
        raise ApplicationError(str(exc)) from None
    if not case.project.labels.filter(value=label).exists():
        values = sorted(case.project.labels.values_list("value", flat=True))
        raise ApplicationError(f"Class {label} is not in this project's label set {values}.")
    timeout = settings.INTERACTIVE_TIMEOUT_SECONDS
    route = learning_selectors.interactive_route(project=case.project)
    result = dispatch.case_interactive_segment(
        volume.id, request, route=None if route is None else route.as_message(), expires=timeout
    )
    try:
        out = result.get(timeout=timeout)
    except CeleryTimeoutError:
        result.revoke()
        raise ModelTimeoutError(
            f"No model worker answered within {timeout} s: the interactive queue is busy or down."
        ) from None
    if "error" in out:
        raise ApplicationError(out["error"])
    if out["pending"]:
        volume_embeddings_request(volumes=[volume])
    return InteractiveAnswer(
        label=label,
        mask_gzip=interactive.answer_take(out["answer"]),
        seconds=out["seconds"],
        incremental=out["incremental"],
        model=out["model"],
        model_version=out.get("model_version"),
        slices_ready=out["slices_ready"],
        slices_total=out["slices_total"],
        pending=out["pending"],
    )


DEMO_PROJECT = "Hippocampus (demo)"
DEMO_SERIES = "T1 hippocampus crop"  # what pacs.demo writes as the series description
DEMO_LABELS = (LabelSpec(1, "anterior", "#e4572e"), LabelSpec(2, "posterior", "#29a36a"))


def demo_project_ensure() -> tuple[Project, int]:
    """The demo project: the hippocampus MR volumes loaded by ``demo_load`` (series "T1 hippocampus crop"),
    labels as in MSD Task04; new such volumes join it by themselves. Idempotent: returns the project and
    how many volumes were added now."""
    project = Project.objects.filter(name=DEMO_PROJECT).first() or project_create(
        name=DEMO_PROJECT,
        labels=DEMO_LABELS,
        user=None,
        modality="MR",
        description="MSD Task04 hippocampus (CC-BY-SA 4.0): anterior and posterior hippocampus, T1 MR crops.",
        interactive_model="litemedsam",
        intake_series_description=DEMO_SERIES,
    )
    return project, project_intake(project=project)
