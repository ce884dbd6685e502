"""Writes of double reading: the share of a project's volumes read twice, and the reviewer's decision
on a pair of readings (keep one, or merge them class by class)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from django.db import transaction

from accounts.models import User
from annotation.errors import CaseStateError, StaleVersionError
from annotation.masks import mask_read
from annotation.models import Adjudication, Case, MaskVersion, Project, Review
from annotation.readings.selectors import pair_agreement
from annotation.services import (
    Effort,
    _head,
    _own_work_check,
    _version_store,
    audit_event,
    read_twice,
    review_export_queue,
)
from common.exceptions import ApplicationError

# How a merge takes each class: from one reader, where either drew it, or where both did.
MERGE_SOURCES = ("first", "second", "union", "both")


_PAIR_FIELDS = (
    "id",
    "project_id",
    "reading",
    "status",
    "split",
    "score",
    "score_reason",
    "score_model",
    "score_version",
    "volume__id",
    "volume__index",
    "volume__series__series_instance_uid",
)


@transaction.atomic
def project_double_reading_set(*, project: Project, percent: int, user: User | None) -> tuple[int, int]:
    """Read ``percent`` % of the project's volumes twice. Volumes nobody has started yet follow the new
    share at once (a second reading added, or an untouched second reading removed); readings people
    worked on stay. Returns (second readings added, removed)."""
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ApplicationError(
            f"The share of cases read twice is a whole percentage 0..100, got {percent!r}."
        )
    before = project.double_reading_percent
    project.double_reading_percent = percent
    project.save(update_fields=["double_reading_percent"])
    cases = (
        Case.objects.filter(project=project)
        .select_related("volume__series")
        .only(*_PAIR_FIELDS)
        .prefetch_related("versions")
    )
    by_volume: dict[int, dict[int, Case]] = {}
    for case in cases:
        by_volume.setdefault(case.volume_id, {})[case.reading] = case
    added, removed = [], []
    for readings in by_volume.values():
        first = readings.get(1)
        if first is None:
            continue
        v = first.volume
        twice = read_twice(series_instance_uid=v.series.series_instance_uid, index=v.index, percent=percent)
        second = readings.get(2)
        if twice and second is None and first.status == Case.Status.NEW:
            added.append(
                Case(
                    project=project,
                    volume=v,
                    reading=2,
                    split=first.split,
                    score=first.score,
                    score_reason=first.score_reason,
                    score_model=first.score_model,
                    score_version=first.score_version,
                )
            )
        elif (
            not twice
            and second is not None
            and second.status == Case.Status.NEW
            and first.status == Case.Status.NEW
        ):
            removed.append(second.id)
    for case in added:
        case.save(force_insert=True)
        model_head = max(by_volume[case.volume_id][1].versions.all(), key=lambda v: v.number, default=None)
        if model_head is not None:  # both readers start from the same pre-segmentation (same file)
            MaskVersion.objects.create(
                case=case,
                number=0,
                source=model_head.source,
                model_version=model_head.model_version,
                path=model_head.path,
                sha256=model_head.sha256,
            )
    Case.objects.filter(id__in=removed).delete()  # untouched: at most the model's versions go with them
    audit_event(
        actor=user,
        action="project.double_reading",
        obj=project,
        before=before,
        after=percent,
        added=len(added),
        removed=len(removed),
    )
    return len(added), len(removed)


def _merge(a: np.ndarray, b: np.ndarray, sources: Mapping[int, str]) -> np.ndarray:
    """Each class from where ``sources`` says; where classes overlap the higher label value wins."""
    out = np.zeros_like(a)
    for value in sorted(sources):
        how = sources[value]
        ma, mb = a == value, b == value
        mask = {"first": ma, "second": mb, "union": ma | mb, "both": ma & mb}[how]
        out[mask] = value
    return out


def _mean_dice(a: np.ndarray, b: np.ndarray, values: list[int]) -> float:
    """Mean over classes of Dice (a class neither mask has counts 1)."""
    found = []
    for value in values:
        ma, mb = a == value, b == value
        total = int(ma.sum()) + int(mb.sum())
        found.append(1.0 if total == 0 else 2.0 * int((ma & mb).sum()) / total)
    return float(np.mean(found)) if found else 1.0


def _sources(project: Project, sources: Mapping[int, str] | None) -> dict[int, str]:
    values = sorted(project.labels.values_list("value", flat=True))
    sources = {int(k): v for k, v in (sources or {}).items()}
    missing = [v for v in values if v not in sources]
    unknown = sorted(set(sources) - set(values))
    bad = {k: v for k, v in sources.items() if v not in MERGE_SOURCES}
    if missing or unknown or bad:
        raise ApplicationError(
            f"A merge says for each class of the project {values} where it comes from, one of "
            f"{list(MERGE_SOURCES)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not classes of this project: {unknown}" if unknown else "")
            + (f"; not a source: {bad}" if bad else "")
            + ".",
            extra={"missing": missing, "unknown": unknown},
        )
    return sources


@transaction.atomic
def readings_adjudicate(
    *,
    case: Case,
    user: User,
    decision: str,
    first_head_id: int,
    second_head_id: int,
    sources: Mapping[int, str] | None = None,
    comment: str = "",
    override_reason: str = "",
) -> Adjudication:
    """Decide a volume read twice, both readings submitted: keep reading 1 or 2 as it is, or merge them
    class by class (a new version on reading 1, authored by the reviewer). The kept case is approved
    (its DICOM SEG export queued after commit), the other one adjudicated; the agreement between the
    readers and of each with the kept mask is stored. ``*_head_id``: the versions the reviewer
    compared (a reading changed since: StaleVersionError).

    Raises:
        ApplicationError: not a double reading, an unknown decision, a merge without a source per class.
        CaseStateError: a reading is not submitted (or the pair was decided already).
        StaleVersionError: a reading's head is not what the reviewer compared.
        SelfReviewError: the reviewer is one of the readers (an admin may, with ``override_reason``).
    """
    pair = list(
        Case.objects.select_for_update(of=("self",))
        .filter(project_id=case.project_id, volume_id=case.volume_id)
        .select_related("project", "volume", "assignee")
        .order_by("reading")
    )
    if len(pair) != 2:
        raise ApplicationError(f"Case {case.id} is read once: review it on its page.")
    first, second = pair
    if decision not in Adjudication.Decision.values:
        raise ApplicationError(f"A decision is one of {Adjudication.Decision.values}, got '{decision}'.")
    waiting = [c for c in pair if c.status != Case.Status.SUBMITTED]
    if waiting:
        states = ", ".join(
            f"reading {c.reading} is {c.get_status_display()}"
            + (f" ({c.assignee.username})" if c.assignee else "")
            for c in waiting
        )
        raise CaseStateError(f"Both readings must be submitted to compare them: {states}.")
    heads = [_head(c) for c in pair]
    for head, sent in zip(heads, (first_head_id, second_head_id), strict=True):
        if head.id != sent:
            raise StaleVersionError(head)
    reasons = {_own_work_check(case=c, user=user, override_reason=override_reason) for c in pair} - {""}
    project, volume = first.project, first.volume
    labels = list(project.labels.order_by("value"))
    a, b = mask_read(heads[0].path), mask_read(heads[1].path)
    if decision == Adjudication.Decision.MERGE:
        sources = _sources(project, sources)
        final = _merge(a, b, sources)
        result = _version_store(
            case=first,
            mask=final,
            parent=heads[0],
            author=user,
            source=MaskVersion.Source.EDITED,
            effort=Effort(),
        )
        kept, other = first, second
    else:
        sources = {}
        kept, other = (first, second) if decision == Adjudication.Decision.FIRST else (second, first)
        result = heads[0] if kept is first else heads[1]
        final = a if kept is first else b
    rows = pair_agreement(a, b, labels=labels, spacing=volume.spacing)
    hd95 = [r.agreement.hd95_mm for r in rows if r.agreement.hd95_mm is not None]
    values = [label.value for label in labels]
    final_dice = {"first": _mean_dice(a, final, values), "second": _mean_dice(b, final, values)}
    comment = comment.strip()
    override = next(iter(reasons), "")
    adjudication = Adjudication.objects.create(
        project=project,
        first=first,
        second=second,
        first_version=heads[0],
        second_version=heads[1],
        first_reader=first.assignee or heads[0].author,  # the reading's owner (set when taken)
        second_reader=second.assignee or heads[1].author,
        result=result,
        decision=decision,
        sources={str(k): v for k, v in sources.items()},
        agreement={
            str(r.label.value): {
                "dice": r.agreement.dice,
                "hd95_mm": r.agreement.hd95_mm,
                "assd_mm": r.agreement.assd_mm,
            }
            for r in rows
        },
        mean_dice=float(np.mean([r.agreement.dice for r in rows])) if rows else 1.0,
        mean_hd95_mm=float(np.mean(hd95)) if hd95 else None,
        final_dice=final_dice,
        reviewer=user,
        comment=comment,
    )
    review = Review.objects.create(
        case=kept,
        version=result,
        reviewer=user,
        decision=Review.Decision.APPROVE,
        comment=comment or f"{adjudication.get_decision_display()} after comparing the two readings",
        override_reason=override,
        export_status=Review.Export.PENDING,
    )
    kept.status, other.status = Case.Status.APPROVED, Case.Status.ADJUDICATED
    for c in (kept, other):
        c.save(update_fields=["status", "updated_at"])
    if override:
        audit_event(actor=user, action="case.approve_own_work", obj=kept, version=result.id, reason=override)
    audit_event(
        actor=user,
        action="readings.adjudicate",
        obj=adjudication,
        decision=decision,
        kept=kept.id,
        result=result.id,
        mean_dice=adjudication.mean_dice,
    )
    transaction.on_commit(lambda: review_export_queue(review_id=review.id), robust=True)
    return adjudication
