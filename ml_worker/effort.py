"""Annotation effort: what we count per case, and the per-action costs that turn counts into an estimated
annotator time. One definition for the simulation (``python -m ml_worker effort-simulate``,
:mod:`ml_worker.experiments.effort`) and the platform's effort figures (the Learning dashboard), so a
team can lay its real effort beside the simulated curve.

Counts, per approved case (over the whole version chain up to the approved version):

- ``boxes``: 3D boxes drawn as prompts. The platform's case page counts a box as a click (one prompt to
  the model), so its ``clicks`` hold boxes too; :func:`estimated_seconds` prices what it is given.
- ``clicks``: corrective clicks sent to the interactive model (one prompt each).
- ``strokes``: brush or eraser strokes (a stroke paints on one slice).
- ``voxels_painted``: voxels a stroke changed.
- ``model_seconds``: seconds the models spent answering this case's prompts (the annotator waits on
  them; reported apart, since they depend on the hardware, not on the person).

Estimated annotator time (seconds) = boxes x box + clicks x click + strokes x stroke + review, with the
costs of :data:`DEFAULT_COSTS` unless given (their sources are in :data:`COST_SOURCES`). The estimate
leaves model waits out: add ``model_seconds`` for the time at the desk on a given machine.

No torch, numpy or Django here: the platform imports this module in its web process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["COST_SOURCES", "DEFAULT_COSTS", "EFFORT_UNITS", "ActionCosts", "estimated_seconds"]


@dataclass(frozen=True)
class ActionCosts:
    """Seconds an annotator spends per action (see :data:`COST_SOURCES`)."""

    click: float = 2.0
    stroke: float = 3.0
    box: float = 7.0
    review: float = 20.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"the cost of a {name} must be >= 0 seconds, got {value}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_COSTS = ActionCosts()

COST_SOURCES: Mapping[str, str] = {
    "click": "2 s: issue 16's stated default for a corrective click (find the error, click it)",
    "stroke": "3 s: issue 16's stated default for one brush stroke on one slice",
    "box": "7 s: about the time to draw one box by extreme clicking (Papadopoulos et al., ICCV 2017, "
    "'Extreme clicking for efficient object annotation'); our assumption for a 3D box",
    "review": "20 s: issue 16's stated default for looking a finished case over and approving it",
}

EFFORT_UNITS: Mapping[str, str] = {
    "boxes": "count",
    "clicks": "count",
    "strokes": "count",
    "voxels_painted": "voxels",
    "model_seconds": "s",
    "annotator_seconds": "s (estimated from the action costs)",
}


def estimated_seconds(
    *, clicks: float, strokes: float, boxes: float = 0, reviews: float = 1, costs: ActionCosts = DEFAULT_COSTS
) -> float:
    """Estimated annotator seconds for the given action counts (model waits not included)."""
    return boxes * costs.box + clicks * costs.click + strokes * costs.stroke + reviews * costs.review
