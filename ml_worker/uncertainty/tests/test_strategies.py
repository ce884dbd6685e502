from __future__ import annotations

import numpy as np
import pytest

from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.strategies import (
    STRATEGIES,
    DiversityStrategy,
    MissingEmbeddingError,
    MissingScoreError,
    SelectionError,
    UnknownStrategyError,
    get_strategy,
)

UNCERTAINTY = ["entropy", "tta", "mc_dropout", "disagreement"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _item(volume_id: str, point=None, **scores: float) -> PoolItem:
    return PoolItem(volume_id, scores, None if point is None else np.asarray(point, dtype=np.float32))


def _groups() -> dict[str, list[tuple[float, float]]]:
    """Four tight groups of near-duplicates at the corners of a square (side 10, group width 0.2)."""
    corners = {"a": (0.0, 0.0), "b": (10.0, 0.0), "c": (0.0, 10.0), "d": (10.0, 10.0)}
    offsets = [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1), (0.1, 0.1), (0.05, 0.05)]
    return {g: [(x + dx, y + dy) for dx, dy in offsets] for g, (x, y) in corners.items()}


def _grouped_pool(scores=lambda group, i: 0.0, key: str = "entropy") -> list[PoolItem]:
    return [
        _item(f"{group}{i}", point, **{key: scores(group, i)})
        for group, points in _groups().items()
        for i, point in enumerate(points)
    ]


def _group_of(volume_id: str) -> str:
    return volume_id[0]


LABELLED = [_item("labelled-0", (5.0, 5.0), entropy=0.0)]  # equidistant from all groups


def test_registry_holds_every_strategy_by_name():
    assert set(STRATEGIES) == {"random", *UNCERTAINTY, "diversity", "hybrid"}
    for name, cls in STRATEGIES.items():
        assert cls.name == name and get_strategy(name).name == name


def test_unknown_name_fails_loudly_listing_the_known_ones():
    with pytest.raises(UnknownStrategyError, match="unknown selection strategy 'kcentre'.*diversity.*hybrid"):
        get_strategy("kcentre")
    with pytest.raises(KeyError):  # also what a dict lookup would raise
        STRATEGIES["nope"]
    assert issubclass(UnknownStrategyError, ValueError)


@pytest.mark.parametrize("name", UNCERTAINTY)
@pytest.mark.parametrize(
    "scores, k, expected",
    [
        ({"v1": 0.1, "v2": 0.9, "v3": 0.5, "v4": 0.7}, 2, ["v2", "v4"]),
        ({"v1": 0.1, "v2": 0.9, "v3": 0.5, "v4": 0.7}, 4, ["v2", "v4", "v3", "v1"]),
        ({"v1": 0.3, "v2": 0.2}, 1, ["v1"]),
    ],
)
def test_uncertainty_strategies_pick_the_highest_score(name, scores, k, expected):
    pool = [_item(v, **{name: s}) for v, s in scores.items()]  # no embeddings: not needed once warm
    assert get_strategy(name).select(pool, k, labelled=LABELLED, rng=_rng()) == expected


def test_a_per_class_key_ranks_by_that_class():
    pool = [
        _item("v1", entropy=0.9, **{"entropy/anterior": 0.1}),
        _item("v2", entropy=0.1, **{"entropy/anterior": 0.8}),
    ]
    strategy = get_strategy("entropy", key="entropy/anterior")
    ranked = strategy.rank(pool, labelled=LABELLED, rng=_rng())
    assert [r.volume_id for r in ranked] == ["v2", "v1"]
    assert ranked[0].score == pytest.approx(0.8) and "entropy/anterior 0.800" in ranked[0].reason


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_kcenter_picks_far_apart_points(seed, k):
    picked = DiversityStrategy().select(_grouped_pool(), k, rng=_rng(seed))
    assert len(picked) == k
    assert len({_group_of(v) for v in picked}) == k  # never two near-duplicates while a group is unused


@pytest.mark.parametrize(
    "labelled_at, k, expected_groups",
    [
        ([(0.0, 0.0)], 1, {"d"}),  # the corner opposite the labelled one
        ([(0.0, 0.0)], 3, {"b", "c", "d"}),
        ([(0.0, 0.0), (10.0, 10.0)], 2, {"b", "c"}),
        ([(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)], 1, {"d"}),
    ],
)
def test_diversity_counts_labelled_volumes_as_centres(labelled_at, k, expected_groups):
    labelled = [_item(f"l{i}", p) for i, p in enumerate(labelled_at)]
    picked = DiversityStrategy().select(_grouped_pool(), k, labelled=labelled, rng=_rng())
    assert {_group_of(v) for v in picked} == expected_groups and len(picked) == k


def test_diversity_ranks_the_whole_pool_with_distances_and_reasons():
    ranked = DiversityStrategy().rank(_grouped_pool(), k=4, labelled=LABELLED, rng=_rng())
    assert sorted(r.volume_id for r in ranked) == sorted(v.volume_id for v in _grouped_pool())
    assert all(r.score == pytest.approx(np.hypot(5, 5), abs=0.2) for r in ranked[:4])  # far from the centre
    assert all(r.score < 0.2 for r in ranked[4:])  # near-duplicates of picked ones come last
    assert "farthest from labelled and chosen volumes" in ranked[0].reason


def test_hybrid_never_takes_two_from_one_tight_cluster():
    # group "a" holds the five most uncertain volumes of the pool
    pool = _grouped_pool(lambda group, i: (0.9 if group == "a" else 0.2) + 0.01 * i)
    entropy = get_strategy("entropy").select(pool, 4, labelled=LABELLED, rng=_rng())
    assert {_group_of(v) for v in entropy} == {"a"}  # the redundancy hybrid is there to avoid
    for seed in range(3):
        hybrid = get_strategy("hybrid").select(pool, 4, labelled=LABELLED, rng=_rng(seed))
        assert {_group_of(v) for v in hybrid} == {"a", "b", "c", "d"}
        assert hybrid[0] == "a4" and set(hybrid) == {"a4", "b4", "c4", "d4"}  # each group's most uncertain


@pytest.mark.parametrize("k, expected_groups", [(2, 2), (3, 3)])
def test_hybrid_with_fewer_picks_than_clusters_stays_distinct(k, expected_groups):
    pool = _grouped_pool(lambda group, i: {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}[group] - 0.01 * i)
    picked = get_strategy("hybrid").select(pool, k, labelled=LABELLED, rng=_rng())
    assert len({_group_of(v) for v in picked}) == expected_groups
    assert picked[0] == "a0"  # the most uncertain volume of the pool leads


def test_hybrid_reason_names_the_cluster():
    pool = _grouped_pool(lambda group, i: 0.5 + 0.01 * i)
    ranked = get_strategy("hybrid").rank(pool, k=4, labelled=LABELLED, rng=_rng())
    assert ranked[0].reason.startswith("most uncertain of cluster 1/4 (5 volumes): entropy 0.540")
    assert ranked[4].reason.startswith("#2 most uncertain of cluster")


@pytest.mark.parametrize("name", [*UNCERTAINTY, "hybrid"])
@pytest.mark.parametrize(
    "labelled, scored, why",
    [
        ((), True, "no labelled volume yet"),  # scores from a pretrained model, but nothing labelled
        ((), False, "no labelled volume yet"),
        (LABELLED, False, "no adapted model yet"),  # labels exist, no model has scored the pool
    ],
)
def test_cold_start_selects_by_diversity(name, labelled, scored, why):
    key = STRATEGIES[name]().score_key
    pool = _grouped_pool(lambda g, i: 1.0 if g == "a" else 0.0, key=key) if scored else _grouped_pool()
    if not scored:
        pool = [_item(p.volume_id, p.embedding) for p in pool]
    picked = get_strategy(name).select(pool, 4, labelled=labelled, rng=_rng(3))
    assert picked == DiversityStrategy().select(pool, 4, labelled=labelled, rng=_rng(3))
    assert {_group_of(v) for v in picked} == {"a", "b", "c", "d"}
    ranked = get_strategy(name).rank(pool, k=4, labelled=labelled, rng=_rng(3))
    assert all("cold start" in r.reason and why in r.reason and "diversity" in r.reason for r in ranked)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cold_start_takes_typical_volumes_of_distinct_groups_not_outliers(seed):
    # four groups of five, with a denser core in each; and two isolated volumes far away
    pool = _grouped_pool() + [
        _item("x-far", (40.0, 40.0), entropy=0.0),
        _item("y-far", (-30.0, 25.0), entropy=0.0),
    ]
    for name in ("diversity", "hybrid", "entropy"):
        ranked = get_strategy(name).rank(pool, k=4, rng=_rng(seed))
        batch = [r.volume_id for r in ranked[:4]]
        assert {_group_of(v) for v in batch} == {"a", "b", "c", "d"}
        assert all(v.endswith("4") for v in batch)  # (0.05, 0.05): the centre of its group
        assert {r.volume_id for r in ranked[-2:]} == {"x-far", "y-far"}  # the least typical last
        assert "most typical of group 1/" in ranked[0].reason
        assert ("cold start" in ranked[0].reason) == (name != "diversity")  # the others fell back to it
    # with a labelled volume, k-center greedy: the far volumes are the least covered, so they come first
    picked = DiversityStrategy().select(pool, 2, labelled=LABELLED, rng=_rng(seed))
    assert set(picked) == {"x-far", "y-far"}


def test_random_stays_random_at_cold_start():
    ranked = get_strategy("random").rank(_grouped_pool(), rng=_rng())
    assert all(r.reason == "random baseline" for r in ranked)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_deterministic_for_a_seed_and_ties_broken_by_it(name):
    pool = _grouped_pool(lambda g, i: 0.5, key=STRATEGIES[name]().score_key or "entropy")  # all tied
    runs = {
        seed: [get_strategy(name).select(pool, 6, labelled=LABELLED, rng=_rng(seed)) for _ in range(2)]
        for seed in range(4)
    }
    for first, second in runs.values():
        assert first == second and len(first) == 6 == len(set(first))
    assert len({tuple(first) for first, _ in runs.values()}) > 1  # not fixed by pool order


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_select_is_the_head_of_rank(name):
    pool = _grouped_pool(lambda g, i: 0.1 * i + (0.5 if g == "c" else 0.0))
    ranked = get_strategy(name).rank(pool, k=3, labelled=LABELLED, rng=_rng(5))
    assert [r.volume_id for r in ranked[:3]] == get_strategy(name).select(
        pool, 3, labelled=LABELLED, rng=_rng(5)
    )
    assert len(ranked) == len(pool) and all(r.reason for r in ranked)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_k_beyond_the_pool_returns_all_and_an_empty_pool_nothing(name):
    pool = _grouped_pool()[:3]
    picked = get_strategy(name).select(pool, 10, labelled=LABELLED, rng=_rng())
    assert sorted(picked) == sorted(p.volume_id for p in pool)
    assert get_strategy(name).select([], 5, labelled=LABELLED, rng=_rng()) == []
    assert get_strategy(name).rank([], rng=_rng()) == []
    assert get_strategy(name).select(pool, 0, rng=_rng()) == []


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s, pool: s.select(pool, -1, rng=_rng()), SelectionError, "non-negative integer"),
        (lambda s, pool: s.select(pool, 2.5, rng=_rng()), SelectionError, "non-negative integer"),
        (lambda s, pool: s.select(pool, 2, rng=np.random.RandomState(0)), SelectionError, "numpy Generator"),
        (lambda s, pool: s.select(pool + pool[:1], 2, rng=_rng()), SelectionError, "more than once: a0"),
        (lambda s, pool: s.select(pool, 2, labelled=pool[:1], rng=_rng()), SelectionError, "both labelled"),
    ],
)
def test_bad_arguments_fail_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call(get_strategy("entropy"), _grouped_pool())


@pytest.mark.parametrize(
    "name, labelled", [("diversity", LABELLED), ("hybrid", LABELLED), ("entropy", ()), ("diversity", ())]
)
def test_missing_embeddings_are_named(name, labelled):
    pool = _grouped_pool(lambda g, i: 0.1 * i)
    pool[2] = _item(pool[2].volume_id, None, entropy=0.3)
    with pytest.raises(MissingEmbeddingError, match=f"{name if name != 'entropy' else 'diversity'}.*a2"):
        get_strategy(name).select(pool, 2, labelled=labelled, rng=_rng())


def test_labelled_volumes_without_embedding_and_mixed_sizes_are_refused():
    with pytest.raises(MissingEmbeddingError, match="labelled volume.*nolabel"):
        DiversityStrategy().select(_grouped_pool(), 2, labelled=[_item("nolabel")], rng=_rng())
    with pytest.raises(SelectionError, match="different lengths"):
        DiversityStrategy().select(_grouped_pool() + [_item("x", (1.0, 2.0, 3.0))], 2, rng=_rng())
    with pytest.raises(SelectionError, match="pool embeddings have 2 values, labelled ones 3"):
        DiversityStrategy().select(_grouped_pool(), 2, labelled=[_item("l", (1.0, 2.0, 3.0))], rng=_rng())


def test_partly_scored_pool_is_an_error_not_a_cold_start():
    pool = _grouped_pool(lambda g, i: 0.5)
    pool[7] = _item(pool[7].volume_id, pool[7].embedding)
    with pytest.raises(MissingScoreError, match="'entropy' score, which 1 of 20 pool volumes lack: b2"):
        get_strategy("entropy").select(pool, 2, labelled=LABELLED, rng=_rng())
