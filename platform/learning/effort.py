"""Annotation effort in the simulation's units, beside the simulated curve (reads only).

The real effort of an approved case (learning.selectors.ApprovedCase: clicks, strokes and model calls
summed over its version chain) is priced with the per-action costs of :mod:`ml_worker.effort`, the very
costs ``python -m ml_worker effort-simulate`` prices its simulated annotator with, so the two curves
share a definition and a unit (estimated annotator minutes per case):

    estimated seconds = clicks x click + strokes x stroke + one review

The case page counts a box as a click (one prompt to the model), so a real box is priced as a click,
while the simulation prices its boxes apart (``box``); the simulation's ``clicks + boxes`` is the
platform's ``clicks``. The measured minutes (time the case page was open and in use) stay beside the
estimate; they include the model waits and everything the estimate leaves out.

The simulated curve comes from a results.json of ``effort-simulate`` named by the setting
``EFFORT_SIMULATION_RESULTS`` (a path; empty: none), e.g. a study run on the site's own labelled cases.
A file that cannot be read gives a message on the dashboard, never an error page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from learning.selectors import ApprovedCase, EffortGroup
from ml_worker.effort import COST_SOURCES, DEFAULT_COSTS, ActionCosts, estimated_seconds

__all__ = [
    "SimulatedCurve",
    "SimulatedEffort",
    "case_estimated_seconds",
    "group_estimated_minutes",
    "simulated_effort",
]

SETTING_LABELS = {  # effort-simulate's settings as the dashboard names them
    "manual": "simulated: manual (brush only)",
    "frozen": "simulated: LiteMedSAM, not adapted",
    "loop-random": "simulated: the loop, random order",
    "loop-best": "simulated: the loop, ranked worklist",
}


def case_estimated_seconds(case: ApprovedCase, *, costs: ActionCosts = DEFAULT_COSTS) -> float:
    """Estimated annotator seconds of one approved case (its prompts priced as clicks, one review)."""
    return estimated_seconds(clicks=case.clicks, strokes=case.strokes, costs=costs)


def group_estimated_minutes(group: EffortGroup, *, costs: ActionCosts = DEFAULT_COSTS) -> float | None:
    """Mean estimated annotator minutes per approved case of a group (the estimate is linear in the
    counts, so the estimate of the mean counts is the mean of the estimates); None for no case."""
    if not group.cases:
        return None
    return estimated_seconds(clicks=group.clicks, strokes=group.strokes, costs=costs) / 60


@dataclass(frozen=True)
class SimulatedCurve:
    """One setting of a simulation: estimated minutes per case by case number (mean, min and max over
    its seeds), and the mean counts per case."""

    setting: str
    label: str
    seeds: int
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    clicks: float  # per case, boxes included (the platform's count)
    strokes: float

    @property
    def minutes_per_case(self) -> float:
        return sum(self.mean) / len(self.mean) if self.mean else 0.0

    def mean_of_first(self, n: int) -> float | None:
        """Mean estimated minutes over the first `n` simulated cases (None when it has fewer)."""
        return sum(self.mean[:n]) / n if 0 < n <= len(self.mean) else None


@dataclass(frozen=True)
class SimulatedEffort:
    """What the dashboard shows of a simulation results file; `error` says why there is nothing."""

    path: str
    curves: tuple[SimulatedCurve, ...] = ()
    costs: dict[str, float] = field(default_factory=dict)
    same_costs: bool = True
    error: str = ""


def _curve(setting: str, data: dict) -> SimulatedCurve:
    curve = data["curve"]

    def minutes(key: str) -> tuple[float, ...]:
        return tuple(float(v) / 60 for v in curve[key])

    return SimulatedCurve(
        setting=setting,
        label=SETTING_LABELS.get(setting, f"simulated: {setting}"),
        seeds=len(data["seeds"]),
        mean=minutes("mean"),
        low=minutes("min"),
        high=minutes("max"),
        clicks=float(data["clicks_per_case"]) + float(data["boxes_per_case"]),
        strokes=float(data["strokes_per_case"]),
    )


def simulated_effort(*, path: str | Path | None = None) -> SimulatedEffort | None:
    """The simulated effort curves of ``EFFORT_SIMULATION_RESULTS`` (or `path`); None when none is set."""
    path = str(path if path is not None else getattr(settings, "EFFORT_SIMULATION_RESULTS", "") or "")
    if not path:
        return None
    try:
        results = json.loads(Path(path).read_text())
        curves = tuple(_curve(name, data) for name, data in results["settings"].items())
        costs = {k: float(v) for k, v in results["protocol"]["costs"].items()}
    except OSError as exc:
        return SimulatedEffort(
            path, error=f"the simulation results at {path} cannot be read ({exc.strerror})"
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return SimulatedEffort(
            path, error=f"{path} is not a results.json of `python -m ml_worker effort-simulate`"
        )
    if not curves:
        return SimulatedEffort(path, error=f"{path} holds no simulated case yet")
    return SimulatedEffort(path, curves=curves, costs=costs, same_costs=costs == DEFAULT_COSTS.as_dict())


def costs_shown() -> list[tuple[str, float, str]]:
    """(action, seconds, source) of the costs the dashboard prices effort with."""
    return [(name, seconds, COST_SOURCES[name]) for name, seconds in DEFAULT_COSTS.as_dict().items()]


def comparison_png(cases: Sequence[ApprovedCase], simulated: SimulatedEffort) -> bytes:
    """Estimated annotator minutes per approved case against the case's number in approval order (real:
    points and a moving mean), beside each simulated setting's mean curve and its spread over seeds."""
    from learning import plots

    if simulated.error or not simulated.curves:
        return plots._empty(simulated.error or "No simulation results are set.")
    fig, (ax,) = plots._figure()
    for curve in simulated.curves:
        x = range(1, len(curve.mean) + 1)
        (line,) = ax.plot(x, curve.mean, lw=1.4, label=f"{curve.label} ({curve.seeds} seed(s))")
        if curve.seeds > 1:
            ax.fill_between(x, curve.low, curve.high, color=line.get_color(), alpha=0.15, lw=0)
    if cases:
        ordered = sorted(cases, key=lambda c: (c.approved_at, c.case_id))
        real = [case_estimated_seconds(c) / 60 for c in ordered]
        x = range(1, len(real) + 1)
        ax.scatter(x, real, s=14, color="#14213d", alpha=0.5, lw=0)
        ax.plot(x, plots._rolling(real, plots.ROLLING), color="#14213d", lw=2.2, label="this project")
    ax.set_xlabel("cases approved (in approval order)")
    ax.set_ylabel("estimated annotator minutes / case")
    ax.set_ylim(bottom=0)
    ax.grid(True, color="#e4e7ec", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    return plots._png(fig)
