"""Validation gate: locked splits, exact Wilcoxon test, refusing worse models and accepting better ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml_worker.adaptation.gate import GateError, gate, min_cases, split_for, wilcoxon_greater


def test_split_is_deterministic_and_has_the_asked_proportions():
    uids = [f"1.2.826.0.1.{i}" for i in range(4000)]
    splits = [split_for(u, validation=0.2, test=0.1) for u in uids]
    assert splits == [split_for(u, validation=0.2, test=0.1) for u in uids]
    counts = {s: splits.count(s) / len(uids) for s in ("train", "validation", "test")}
    assert counts["validation"] == pytest.approx(0.2, abs=0.03)
    assert counts["test"] == pytest.approx(0.1, abs=0.03)
    assert counts["train"] == pytest.approx(0.7, abs=0.03)
    assert {split_for(u, validation=0.0) for u in uids[:200]} == {"train"}
    # a salt (project) draws independently
    assert [split_for(u, salt="p2") for u in uids[:200]] != [split_for(u) for u in uids[:200]]


def test_split_is_the_documented_hash_draw():
    # the draw is part of the contract: a change of it would silently move volumes between splits
    for i in range(100):
        assert split_for(f"vol-{i}", validation=0.3, test=0.2) == _expected(f"vol-{i}", 0.3, 0.2)


def _expected(uid: str, validation: float, test: float) -> str:
    import hashlib

    u = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2.0**64
    return "test" if u < test else "validation" if u < test + validation else "train"


@pytest.mark.parametrize("kwargs", [{"validation": 0.8, "test": 0.3}, {"validation": -0.1}])
def test_split_refuses_bad_fractions(kwargs):
    with pytest.raises(GateError, match="fractions"):
        split_for("x", **kwargs)


def _brute_force_p(deltas: np.ndarray) -> float:
    d = deltas[deltas != 0]
    abs_d = np.abs(d)
    ranks = np.array([(abs_d < v).sum() + ((abs_d == v).sum() + 1) / 2 for v in abs_d])
    observed = ranks[d > 0].sum()
    sums = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    return float(np.mean(np.array(sums) >= observed - 1e-9))


@pytest.mark.parametrize("seed", range(5))
def test_exact_wilcoxon_matches_enumeration_with_ties_and_zeros(seed):
    rng = np.random.default_rng(seed)
    deltas = np.round(rng.normal(0.01, 0.03, 11), 2)  # rounding makes ties and zeros
    deltas[0] = 0.0
    p, _, n = wilcoxon_greater(deltas)
    assert n == int((deltas != 0).sum())
    assert p == pytest.approx(_brute_force_p(deltas), abs=1e-12)


def test_wilcoxon_known_values_and_normal_approximation():
    assert wilcoxon_greater(np.ones(5))[0] == pytest.approx(1 / 32)
    assert wilcoxon_greater(-np.ones(5))[0] == pytest.approx(1.0)
    assert wilcoxon_greater(np.zeros(4)) == (1.0, 0.0, 0)
    rng = np.random.default_rng(0)
    deltas = rng.normal(0.05, 1.0, 500)  # above EXACT_MAX_N: normal approximation
    p_big, _, _ = wilcoxon_greater(deltas)
    p_exact, _, _ = wilcoxon_greater(deltas[:400])
    assert 0 < p_big < 1 and 0 < p_exact < 1


def test_min_cases():
    assert min_cases(0.05) == 5  # 2^-5 = 0.031 < 0.05 <= 2^-4
    assert min_cases(0.01) == 7


def _paired(n: int, shift: float, noise: float, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    rng = np.random.default_rng(seed)
    active = rng.uniform(0.6, 0.85, n)
    candidate = np.clip(active + shift + rng.normal(0, noise, n), 0, 1)
    return {f"c{i}": float(v) for i, v in enumerate(candidate)}, {
        f"c{i}": float(v) for i, v in enumerate(active)
    }


def test_a_clearly_better_model_is_promotable():
    candidate, active = _paired(20, 0.04, 0.01)
    result = gate(candidate, active)
    assert result.promotable and result.p_value < 0.05 and result.n == 20
    assert result.mean_delta == pytest.approx(np.mean([candidate[c] - active[c] for c in candidate]))
    assert result.reason.startswith("promotable") and "Wilcoxon" in result.reason


def test_a_worse_model_is_refused():
    candidate, active = _paired(20, -0.03, 0.01)
    result = gate(candidate, active)
    assert not result.promotable and result.mean_delta < 0 and result.p_value > 0.5
    assert "below the margin" in result.reason


def test_a_tiny_improvement_is_refused_for_the_margin_even_if_significant():
    candidate, active = _paired(30, 0.004, 0.0005)
    result = gate(candidate, active, margin=0.01)
    assert not result.promotable and result.p_value < 0.05
    assert "below the margin 0.01" in result.reason and "p >=" not in result.reason


def test_a_big_but_noisy_improvement_is_refused_as_possible_chance():
    active = {f"c{i}": 0.7 for i in range(8)}
    candidate = {f"c{i}": 0.7 + d for i, d in enumerate([0.3, 0.2, -0.02, -0.03, 0.01, -0.01, -0.04, 0.02])}
    result = gate(candidate, active, margin=0.01)
    assert result.mean_delta >= 0.01 and result.p_value >= 0.05 and not result.promotable
    assert "may be chance" in result.reason


def test_first_model_uses_the_floor():
    scores = {f"c{i}": 0.8 for i in range(3)}
    ok = gate(scores, None, floor=0.75)
    assert ok.promotable and ok.p_value is None and "first model" in ok.reason and "reaches" in ok.reason
    low = gate(scores, None, floor=0.85)
    assert not low.promotable and "below the floor" in low.reason
    with pytest.raises(GateError, match="floor"):
        gate(scores, None)


def test_case_sets_must_match_and_be_large_enough():
    candidate, active = _paired(10, 0.05, 0.01)
    active.pop("c3")
    active["c99"] = 0.5
    with pytest.raises(GateError, match=r"different cases.*'c3'.*'c99'"):
        gate(candidate, active)
    small_c, small_a = _paired(4, 0.1, 0.0)
    with pytest.raises(GateError, match="too few"):
        gate(small_c, small_a)


def test_scores_must_be_dice_values():
    candidate, active = _paired(6, 0.05, 0.01)
    candidate["c0"] = float("nan")
    with pytest.raises(GateError, match="not a Dice"):
        gate(candidate, active)
