"""Reads on projects, cases, versions, effort and the audit log."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from accounts.models import User
from annotation.models import Adjudication, AuditEvent, Case, MaskVersion, Project, Review
from common.exceptions import ApplicationError
from studies.models import Volume

# Worklist rows need the series/study header fields, never a volume's per-slice UID lists.
_WORKLIST_FIELDS = (
    "id",
    "project_id",
    "status",
    "reading",
    "split",
    "score",
    "score_reason",
    "score_model",
    "score_version",
    "updated_at",
    "assignee__username",
    "lock__user__username",
    "lock__expires_at",
    "volume__id",
    "volume__shape",
    "volume__spacing",
    "volume__series__modality",
    "volume__series__description",
    "volume__series__gone_at",
    "volume__series__study__description",
    "volume__series__study__study_date",
)


@dataclass(frozen=True)
class Rejection:
    """A reviewer's rejection its annotator has not resolved yet (by submitting again)."""

    comment: str
    reviewer: str
    at: datetime
    version_number: int  # the rejected version, as people count


# A rejection is open while the case is back with its annotator: rejected, or taken again to fix it.
_OPEN_REJECTION_STATUSES = (Case.Status.REJECTED, Case.Status.IN_PROGRESS)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a case's history (newest first on the page)."""

    at: datetime
    kind: str  # "version" or a review decision ("approve", "reject")
    who: str
    text: str
    comment: str = ""


@dataclass(frozen=True)
class WorklistPage:
    cases: list[Case]
    next_cursor: str | None


def project_list() -> QuerySet[Project]:
    """Projects with their labels and how many cases are in each state (``n_<status>``)."""
    by_status = {f"n_{value}": Count("cases", filter=Q(cases__status=value)) for value in Case.Status.values}
    return Project.objects.prefetch_related("labels").annotate(n_cases=Count("cases"), **by_status)


def project_get(*, project_id: int) -> Project | None:
    return project_list().filter(pk=project_id).first()


def cursor_encode(case: Case) -> str:
    """The cursor of the page that starts after ``case``."""
    return base64.urlsafe_b64encode(f"{case.score!r}:{case.id}".encode()).decode()


def _cursor_decode(cursor: str) -> tuple[float, int]:
    try:
        score, case_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        return float(score), int(case_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApplicationError("The cursor is not one this worklist gave out.") from exc


def volumes_by_id(*, volume_ids: Iterable[int]) -> dict[int, Volume]:
    return Volume.objects.select_related("series").in_bulk(list(volume_ids))


def worklist_query(
    *,
    project: Project,
    user: User,
    status: str = "",
    modality: str = "",
    assignee: str = "",
    cursor: str = "",
) -> QuerySet[Case]:
    """The worklist's cases in page order (see :func:`worklist`), from ``cursor`` on."""
    qs = Case.objects.filter(project=project)
    if status:
        if status not in Case.Status.values:
            raise ApplicationError(f"Unknown status '{status}'; one of {Case.Status.values}.")
        qs = qs.filter(status=status)
    if modality:
        qs = qs.filter(volume__series__modality=modality)
    if assignee == "me":
        qs = qs.filter(assignee=user)
    elif assignee == "none":
        qs = qs.filter(assignee__isnull=True)
    elif assignee:
        qs = qs.filter(assignee__username=assignee)
    if cursor:
        score, case_id = _cursor_decode(cursor)
        # The first condition bounds the index range; the second resolves ties on the score.
        qs = qs.filter(score__lte=score).filter(Q(score__lt=score) | Q(id__lt=case_id))
    last = Review.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-id")
    return (
        qs.select_related("assignee", "lock__user", "volume__series__study")
        .only(*_WORKLIST_FIELDS)
        .annotate(
            last_review_id=Subquery(last.values("id")[:1]),
            read_twice=Exists(
                Case.objects.filter(project=OuterRef("project"), volume=OuterRef("volume")).exclude(
                    pk=OuterRef("pk")
                )
            ),
        )
        .order_by("-score", "-id")
    )


def case_rejection(case: Case) -> Rejection | None:
    """The open rejection of a case: its latest review rejected it and its annotator has not submitted
    again. Uses the latest review worklist() attached or the prefetched reviews (``case_detail``) when there,
    else asks the database."""
    if case.status not in _OPEN_REJECTION_STATUSES:
        return None
    if "last_review" in case.__dict__:  # set by worklist()
        last = case.last_review
    elif "reviews" in getattr(case, "_prefetched_objects_cache", {}):
        reviews = list(case.reviews.all())  # oldest first (case_detail)
        last = reviews[-1] if reviews else None
    else:
        last = case.reviews.select_related("reviewer", "version").order_by("-created_at", "-id").first()
    if last is None or last.decision != Review.Decision.REJECT:
        return None
    return Rejection(
        comment=last.comment,
        reviewer=last.reviewer.username,
        at=last.created_at,
        version_number=last.version.display_number,
    )


def case_history(case: Case) -> list[HistoryEntry]:
    """What happened to a case (loaded by ``case_detail``), newest first: each saved version and each
    review with its comment. Version numbers as people count."""
    entries = [
        HistoryEntry(
            at=v.created_at,
            kind="version",
            who=v.author.username if v.author else (v.model_version or "model"),
            text=f"Version {v.display_number} saved ({v.get_source_display()})",
        )
        for v in case.versions.all()
    ]
    verbs = {Review.Decision.APPROVE: "Approved", Review.Decision.REJECT: "Rejected"}
    entries += [
        HistoryEntry(
            at=r.created_at,
            kind=r.decision,
            who=r.reviewer.username,
            text=f"{verbs.get(r.decision, r.decision)} version {r.version.display_number}"
            + review_export_state(r),
            comment=r.comment,
        )
        for r in case.reviews.all()
    ]
    adjudication = (
        Adjudication.objects.filter(Q(first=case) | Q(second=case)).select_related("reviewer").first()
    )
    if adjudication is not None:
        entries.append(
            HistoryEntry(
                at=adjudication.created_at,
                kind="adjudicate",
                who=adjudication.reviewer.username,
                text=f"Both readings compared: {adjudication.get_decision_display()} "
                f"(mean Dice between the readers {adjudication.mean_dice:.2f})",
                comment=adjudication.comment,
            )
        )
    return sorted(entries, key=lambda e: e.at, reverse=True)


def worklist(
    *,
    project: Project,
    user: User,
    status: str = "",
    modality: str = "",
    assignee: str = "",
    cursor: str = "",
    limit: int = 50,
) -> WorklistPage:
    """One page of the project's cases, highest active-learning score first (ties: newest first).

    ``assignee``: ``me``, ``none`` or a username. ``cursor`` is the ``next_cursor`` of the previous page;
    pages are keyset-based on (score, id), so they cost the same at any depth and a case is never shown
    twice nor skipped when others change status between pages.
    """
    qs = worklist_query(
        project=project, user=user, status=status, modality=modality, assignee=assignee, cursor=cursor
    )
    rows = list(qs[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    # the latest review of the cases that may carry an open rejection, in one query for the page
    wanted = [c.last_review_id for c in rows if c.status in _OPEN_REJECTION_STATUSES and c.last_review_id]
    reviews = Review.objects.select_related("reviewer", "version").in_bulk(wanted) if wanted else {}
    for case in rows:
        case.last_review = reviews.get(case.last_review_id)
    return WorklistPage(cases=rows, next_cursor=cursor_encode(rows[-1]) if more else None)


def case_get(*, case_id: int) -> Case | None:
    return (
        Case.objects.select_related("project", "volume__series__study", "assignee").filter(pk=case_id).first()
    )


def case_detail(*, case_id: int) -> Case | None:
    """A case with its lock, versions (oldest first) and reviews."""
    return (
        Case.objects.select_related("project", "volume__series__study", "assignee", "lock__user")
        .prefetch_related(
            "project__labels",
            Prefetch("versions", MaskVersion.objects.select_related("author").order_by("number")),
            Prefetch(
                "reviews", Review.objects.select_related("reviewer", "version").order_by("created_at", "id")
            ),
        )
        .filter(pk=case_id)
        .first()
    )


def active_lock_holder(case: Case) -> tuple[str, str] | None:
    """(username, expires_at ISO) of an unexpired lock on ``case`` (loaded with ``lock__user``), else None."""
    lock = getattr(case, "lock", None)
    if lock is None or lock.expires_at <= timezone.now():
        return None
    return lock.user.username, lock.expires_at.isoformat()


def version_list(*, case: Case) -> QuerySet[MaskVersion]:
    return MaskVersion.objects.filter(case=case).select_related("author").order_by("number")


def version_get(*, version_id: int) -> MaskVersion | None:
    return MaskVersion.objects.select_related("case").filter(pk=version_id).first()


_EFFORT = dict(
    n_versions=Count("versions"),
    seconds=Sum("versions__seconds"),
    clicks=Sum("versions__clicks"),
    strokes=Sum("versions__strokes"),
    model_calls=Sum("versions__model_calls"),
)


def effort_summary(*, project: Project, after_id: int = 0, limit: int = 200) -> dict:
    """Effort per case (cases with at least one version, by id, ``limit`` from ``after_id``) and for the
    whole project. ``approved_unedited`` counts approved cases whose approved mask is the model's."""
    cases = list(
        Case.objects.filter(project=project, id__gt=after_id)
        .annotate(**_EFFORT)
        .filter(n_versions__gt=0)
        .values("id", "status", "assignee__username", *_EFFORT)
        .order_by("id")[:limit]
    )
    versions = MaskVersion.objects.filter(case__project=project)
    totals = versions.aggregate(
        seconds=Sum("seconds"), clicks=Sum("clicks"), strokes=Sum("strokes"), model_calls=Sum("model_calls")
    )
    approvals = Review.objects.filter(case__project=project, decision=Review.Decision.APPROVE)
    return {
        "cases": cases,
        "next_after": cases[-1]["id"] if len(cases) == limit else None,
        "totals": {k: v or 0 for k, v in totals.items()}
        | {
            "versions_by_source": dict(versions.values_list("source").annotate(n=Count("id")).order_by()),
            "approved": approvals.count(),
            "approved_unedited": approvals.filter(version__source=MaskVersion.Source.MODEL).count(),
        },
    }


def audit_list(
    *, object_type: str = "", object_id: str = "", before_id: int | None = None, limit: int = 100
) -> list[AuditEvent]:
    """Newest first; ``before_id`` pages back."""
    qs = AuditEvent.objects.select_related("actor")
    if object_type:
        qs = qs.filter(object_type=object_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    if before_id is not None:
        qs = qs.filter(id__lt=before_id)
    return list(qs.order_by("-id")[:limit])


def review_export_state(review: Review) -> str:
    """Where an approval's DICOM SEG is, for the case history: '' for a rejection."""
    if review.decision != Review.Decision.APPROVE or not review.export_status:
        return ""
    if review.export_status == Review.Export.DONE:
        return " · DICOM SEG in the PACS"
    state = "export pending" if review.export_status == Review.Export.PENDING else "export failed"
    return f" · DICOM SEG {state}" + (f": {review.export_error}" if review.export_error else "")


def reviews_export_stale(*, idle_since: datetime, alive_actions: Iterable[str]) -> list[int]:
    """Approvals whose DICOM SEG export is still pending, made before ``idle_since``, with none of
    ``alive_actions`` audited on them since then: their export message was lost or never sent."""
    alive = AuditEvent.objects.filter(
        object_type="annotation.review", action__in=list(alive_actions), at__gte=idle_since
    ).values_list("object_id", flat=True)
    return list(
        Review.objects.filter(export_status=Review.Export.PENDING, created_at__lt=idle_since)
        .exclude(id__in={int(object_id) for object_id in alive})
        .order_by("id")
        .values_list("id", flat=True)
    )
