"""Reads of double reading: a volume's two readings, who may see their masks, their agreement (live,
for the reviewer) and the team's agreement per reader (from past adjudications, for the dashboard)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from accounts.models import User
from annotation.masks import mask_read
from annotation.models import Adjudication, Case, LabelClass, MaskVersion, Project
from ml_worker.inference.agreement import ClassAgreement, agreement

# Before adjudication a reading's human work is visible only to its reader and to reviewers.
_OPEN = (Case.Status.IN_PROGRESS, Case.Status.SUBMITTED, Case.Status.REJECTED)


@dataclass(frozen=True)
class ClassRow:
    label: LabelClass
    agreement: ClassAgreement


@dataclass(frozen=True)
class Comparison:
    """Two readings' heads and how they agree, class by class."""

    first: Case
    second: Case
    first_head: MaskVersion
    second_head: MaskVersion
    rows: list[ClassRow]

    @property
    def mean_dice(self) -> float:
        return float(np.mean([r.agreement.dice for r in self.rows])) if self.rows else 1.0

    @property
    def mean_hd95_mm(self) -> float | None:
        found = [r.agreement.hd95_mm for r in self.rows if r.agreement.hd95_mm is not None]
        return float(np.mean(found)) if found else None


@dataclass(frozen=True)
class ReaderAgreement:
    """One reader's record over the adjudicated double readings they took part in."""

    reader: str
    readings: int
    mean_dice: float  # with the other reader
    mean_hd95_mm: float | None
    mean_final_dice: float  # with the mask the reviewer kept
    kept: int  # times the reviewer kept their reading as it was


def reading_pair(*, case: Case) -> tuple[Case, Case] | None:
    """The volume's two readings (reading 1, reading 2) when ``case`` is one of a pair, else None."""
    cases = list(
        Case.objects.filter(project_id=case.project_id, volume_id=case.volume_id)
        .select_related("project", "volume__series__study", "assignee")
        .order_by("reading")
    )
    return (cases[0], cases[1]) if len(cases) == 2 else None


def adjudication_of(*, case: Case) -> Adjudication | None:
    return Adjudication.objects.filter(first=case).first() or Adjudication.objects.filter(second=case).first()


def masks_hidden(*, case: Case, user: User) -> bool:
    """Whether ``user`` must not see this case's masks: it is one of two readings of a volume, not
    adjudicated yet, someone else's work, and the user is the other reader or not a reviewer. Readers
    (admins included) thus never see each other's masks; a case nobody has taken holds only the model's
    mask and is visible to all."""
    if case.status not in _OPEN or case.assignee_id in (None, user.id):
        return False
    others = Case.objects.filter(project_id=case.project_id, volume_id=case.volume_id).exclude(pk=case.pk)
    other = others.only("assignee_id").first()
    if other is None:
        return False
    return other.assignee_id == user.id or not user.has_perm("annotation.review_case")


def pair_agreement(
    a: np.ndarray, b: np.ndarray, *, labels: Sequence[LabelClass], spacing: Sequence[float]
) -> list[ClassRow]:
    found = agreement(a, b, labels=[label.value for label in labels], spacing=spacing)
    return [ClassRow(label=label, agreement=row) for label, row in zip(labels, found, strict=True)]


def readings_compare(*, first: Case, second: Case) -> Comparison | None:
    """Both readings' heads compared class by class (a few seconds for a large volume); None while a
    reading has no version yet."""
    heads = [c.versions.select_related("author").order_by("-number").first() for c in (first, second)]
    if None in heads:
        return None
    labels = list(first.project.labels.order_by("value"))
    rows = pair_agreement(
        mask_read(heads[0].path), mask_read(heads[1].path), labels=labels, spacing=first.volume.spacing
    )
    return Comparison(first=first, second=second, first_head=heads[0], second_head=heads[1], rows=rows)


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def reader_agreement(*, project: Project) -> list[ReaderAgreement]:
    """Per reader, over the project's adjudicated double readings: how well they agree with the other
    reader (Dice, HD95) and with what the reviewer kept, and how often their reading was kept; the
    least agreeing first (who needs a look)."""
    rows: dict[str, list[tuple[float, float | None, float, bool]]] = defaultdict(list)
    adjudications = Adjudication.objects.filter(project=project).select_related(
        "first_reader", "second_reader"
    )
    for adj in adjudications:
        for side, reader in (("first", adj.first_reader), ("second", adj.second_reader)):
            rows[reader.username].append(
                (adj.mean_dice, adj.mean_hd95_mm, float(adj.final_dice.get(side, 0.0)), adj.decision == side)
            )
    out = [
        ReaderAgreement(
            reader=name,
            readings=len(found),
            mean_dice=float(np.mean([f[0] for f in found])),
            mean_hd95_mm=_mean(f[1] for f in found),
            mean_final_dice=float(np.mean([f[2] for f in found])),
            kept=sum(f[3] for f in found),
        )
        for name, found in rows.items()
    ]
    return sorted(out, key=lambda r: (r.mean_final_dice, r.reader))
