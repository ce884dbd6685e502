"""The validation gate: a candidate model is promoted only if it beats the active one on the locked split.

Two parts:

* :func:`split_for` puts a volume in ``train``, ``validation`` or ``test`` from a hash of its id, so
  the assignment is the same on every machine and every call: drawn once, never re-drawn. (Keep a
  project's fractions fixed: changing them moves volumes between splits.)
* :func:`gate` compares per-case Dice of a candidate and the active model on the same validation cases.
  It promotes only if the mean improvement is at least ``margin`` *and* a one-sided paired test says
  the improvement is not chance: the Wilcoxon signed-rank test, computed exactly (the null
  distribution of the signed-rank statistic by dynamic programming over the observed ranks, so ties
  are handled exactly, conditional on them; zero differences are dropped, as Wilcoxon did). With no
  scipy dependency. Above :data:`EXACT_MAX_N` non-zero differences the normal approximation with tie
  and continuity corrections is used. For the first model (no active one) it promotes if the mean
  Dice reaches an absolute floor given by the caller. The result says, in words, why.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EXACT_MAX_N",
    "GateError",
    "GateResult",
    "gate",
    "min_cases",
    "split_for",
    "wilcoxon_greater",
]

EXACT_MAX_N = 400
SPLITS = ("train", "validation", "test")


class GateError(ValueError):
    """Inputs the gate cannot judge: different case sets, too few cases, invalid scores or settings."""


def _unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from the sha256 of `text` (the same everywhere, forever)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_for(volume_uid: str, *, validation: float = 0.2, test: float = 0.0, salt: str = "") -> str:
    """The split of a volume: ``"train"``, ``"validation"`` or ``"test"``, deterministic from its id.

    A volume falls in ``test`` with probability `test`, in ``validation`` with probability `validation`,
    else in ``train``; the draw is the sha256 of ``salt + volume_uid``, so it never changes.

    Args:
        volume_uid: a stable id (e.g. the SeriesInstanceUID or the volume's content hash).
        validation, test: fractions, each in [0, 1], summing to at most 1.
        salt: e.g. the project id, so two projects sharing volumes draw independently.
    """
    if not volume_uid:
        raise GateError("volume_uid must be a non-empty string")
    if not (0.0 <= validation <= 1.0 and 0.0 <= test <= 1.0 and validation + test <= 1.0):
        raise GateError(f"validation and test must be fractions summing to <= 1, got {validation} and {test}")
    u = _unit_hash(f"{salt}{volume_uid}")
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


def _doubled_ranks(values: np.ndarray) -> np.ndarray:
    """2 x the average ranks (1-based) of `values`: integers even with ties."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.int64)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + 1) + (j + 1)  # 2 x mean of ranks i+1..j+1
        i = j + 1
    return ranks


def wilcoxon_greater(deltas: np.ndarray) -> tuple[float, float, int]:
    """One-sided Wilcoxon signed-rank test of "the differences tend to be positive".

    Args:
        deltas: paired differences (candidate - active).

    Returns:
        ``(p_value, w_plus, n)``: the p-value ``P(W+ >= observed)`` under the null of symmetric signs,
        the statistic (sum of the ranks of positive differences), and the number of non-zero
        differences used. ``p = 1`` when every difference is zero.
    """
    d = np.asarray(deltas, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0, 0.0, 0
    ranks2 = _doubled_ranks(np.abs(d))
    w2 = int(ranks2[d > 0].sum())
    if n <= EXACT_MAX_N:
        # null distribution of sum(r_i * B_i), B_i fair coins, over doubled-rank sums
        total = int(ranks2.sum())
        counts = np.zeros(total + 1, dtype=np.float64)
        counts[0] = 1.0
        for r in ranks2:  # each rank joins W+ with probability 1/2; r >= 2 (doubled ranks)
            shifted = np.zeros_like(counts)
            shifted[r:] = counts[:-r]
            counts = 0.5 * (counts + shifted)  # probabilities, not 2^n counts
        p = float(counts[w2:].sum())
    else:
        ranks = ranks2 / 2.0
        mean = ranks.sum() / 2.0
        var = (ranks**2).sum() / 4.0  # with average ranks this is the tie-corrected variance
        z = (w2 / 2.0 - mean - 0.5) / math.sqrt(var)
        p = 0.5 * math.erfc(z / math.sqrt(2.0))
    return min(1.0, max(0.0, p)), w2 / 2.0, n


def min_cases(alpha: float) -> int:
    """Fewest paired cases with which a one-sided exact signed-rank test can reach ``p < alpha``
    (every case improved: ``p = 2^-n``)."""
    return max(1, math.floor(math.log2(1.0 / alpha)) + 1)


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict.

    promotable: whether the candidate may become the active model.
    mean_delta: mean per-case Dice of the candidate minus the active model's (with no active model:
        the candidate's mean Dice).
    p_value: one-sided Wilcoxon signed-rank p-value (None with no active model).
    n: number of paired cases.
    reason: why, in a sentence an admin can read.
    candidate_mean, active_mean: mean Dice of each (active None for the first model).
    """

    promotable: bool
    mean_delta: float
    p_value: float | None
    n: int
    reason: str
    candidate_mean: float
    active_mean: float | None = None


def _scores(scores: Mapping[str, float], what: str) -> dict[str, float]:
    out = {}
    for case, value in scores.items():
        v = float(value)
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise GateError(f"{what} score of case {case!r} is {value}, not a Dice in [0, 1]")
        out[str(case)] = v
    return out


def gate(
    candidate_scores: Mapping[str, float],
    active_scores: Mapping[str, float] | None,
    *,
    margin: float = 0.01,
    alpha: float = 0.05,
    floor: float | None = None,
) -> GateResult:
    """Decide whether a candidate model may replace the active one.

    Args:
        candidate_scores: case id -> Dice (e.g. mean over classes) of the candidate on the validation split.
        active_scores: the same for the active model, on the same cases; None when there is no active
            model yet (the first model of a project).
        margin: the least mean Dice improvement worth a promotion.
        alpha: significance level of the one-sided paired test.
        floor: with no active model, the least mean Dice the first model must reach (required then).

    Raises:
        GateError: the two case sets differ (names some of the differences), fewer cases than a
            paired test at `alpha` can ever decide on (see :func:`min_cases`), scores outside [0, 1],
            no `floor` for a first model, or invalid settings.
    """
    if not 0.0 < alpha < 1.0 or margin < 0:
        raise GateError(f"alpha must be in (0, 1) and margin >= 0, got {alpha} and {margin}")
    candidate = _scores(candidate_scores, "candidate")
    if not candidate:
        raise GateError("no candidate scores: evaluate on the validation split first")
    candidate_mean = float(np.mean(list(candidate.values())))

    if active_scores is None:
        if floor is None:
            raise GateError("there is no active model: give the absolute floor the first model must reach")
        ok = candidate_mean >= floor
        reason = (
            f"first model: no active model to compare with; mean Dice {candidate_mean:.4f} on "
            f"{len(candidate)} validation cases {'reaches' if ok else 'is below'} the floor {floor:.4f}"
        )
        return GateResult(ok, candidate_mean, None, len(candidate), reason, candidate_mean, None)

    active = _scores(active_scores, "active")
    only_candidate = sorted(set(candidate) - set(active))
    only_active = sorted(set(active) - set(candidate))
    if only_candidate or only_active:
        raise GateError(
            "candidate and active model were scored on different cases: "
            f"{len(only_candidate)} only for the candidate {only_candidate[:5]}, "
            f"{len(only_active)} only for the active model {only_active[:5]}; "
            "score both on the same locked validation split"
        )
    n = len(candidate)
    needed = min_cases(alpha)
    if n < needed:
        raise GateError(
            f"{n} validation cases are too few: a one-sided paired test at alpha={alpha} needs at least "
            f"{needed} (even {n} improvements out of {n} give p = {2.0**-n:.3f})"
        )
    cases = sorted(candidate)
    deltas = np.array([candidate[c] - active[c] for c in cases])
    mean_delta = float(deltas.mean())
    p, _, used = wilcoxon_greater(deltas)
    active_mean = float(np.mean([active[c] for c in cases]))
    better, worse = int((deltas > 0).sum()), int((deltas < 0).sum())
    facts = (
        f"mean Dice {candidate_mean:.4f} vs active {active_mean:.4f} (delta {mean_delta:+.4f}) on {n} "
        f"paired validation cases, {better} better and {worse} worse; one-sided Wilcoxon signed-rank "
        f"p = {p:.4f}"
    )
    big_enough, significant = mean_delta >= margin, p < alpha
    if big_enough and significant:
        reason = f"promotable: {facts}; the improvement reaches the margin {margin} and p < {alpha}"
    elif not big_enough and not significant:
        reason = f"not promotable: {facts}; the improvement is below the margin {margin} and p >= {alpha}"
    elif not big_enough:
        reason = f"not promotable: {facts}; the improvement is below the margin {margin}"
    else:
        reason = f"not promotable: {facts}; p >= {alpha}, so the improvement may be chance"
    return GateResult(big_enough and significant, mean_delta, p, n, reason, candidate_mean, active_mean)
