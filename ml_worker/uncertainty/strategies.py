"""Selection strategies: read the scores and embeddings of the unlabelled pool and choose what to label.

As in MONAI Label, scoring and selection are separate: scorers (:mod:`ml_worker.uncertainty.scorers`,
heavy, they run models) fill :class:`~ml_worker.uncertainty.pool.PoolItem` scores and embeddings;
a :class:`Strategy` (cheap, pure, seeded) only orders and picks.

================  ===================================================================  ================
name              order                                                                reads
================  ===================================================================  ================
``random``        a random permutation (the baseline every other strategy must beat)   nothing
``entropy``       highest score first                                                  ``entropy``
``tta``           highest score first                                                  ``tta``
``mc_dropout``    highest score first                                                  ``mc_dropout``
``disagreement``  highest score first                                                  ``disagreement``
``diversity``     k-center greedy on embeddings, labelled volumes counting as centres  embedding
                  (nothing labelled: the most typical volume of each k-means group)
``hybrid``        k-means into ``k`` clusters, most uncertain of each cluster first    score, embedding
================  ===================================================================  ================

Cold start: an uncertainty strategy (and ``hybrid``) with no labelled volume yet, or with no volume of
the pool scored by the method it reads (no adapted model exists to score with), ranks by ``diversity``
instead, and every reason says so. ``random`` stays random (it is the baseline).

Every strategy gives :meth:`Strategy.rank` (the whole pool in order, each with a score and a short
reason the worklist shows) and :meth:`Strategy.select` (the first ``k`` ids of that order). Both are
deterministic for a given ``rng`` (ties are broken by it, so they are not biased by pool order).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ml_worker.uncertainty.pool import PoolItem

__all__ = [
    "STRATEGIES",
    "DiversityStrategy",
    "HybridStrategy",
    "MissingEmbeddingError",
    "MissingScoreError",
    "Ranked",
    "RandomStrategy",
    "SelectionError",
    "Strategy",
    "UncertaintyStrategy",
    "UnknownStrategyError",
    "get_strategy",
]


class SelectionError(ValueError):
    """A pool, a labelled set or a ``k`` a strategy cannot work with (the message says what and why)."""


class MissingEmbeddingError(SelectionError):
    """A strategy that measures diversity was given volumes without an embedding."""


class MissingScoreError(SelectionError):
    """Some volumes of the pool have the score a strategy ranks by and others do not."""


class UnknownStrategyError(SelectionError, KeyError):
    """No strategy is registered under that name (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Ranked:
    """One volume's place in a ranking: its id, the score it was ranked by, and why (for the worklist)."""

    volume_id: str
    score: float
    reason: str


class Strategy(ABC):
    """Orders the unlabelled pool by how much labelling each volume should teach the model.

    Subclasses implement :meth:`_rank` on a checked, non-empty pool; :meth:`rank` and :meth:`select`
    are the public calls and are not overridden.
    """

    name: ClassVar[str]
    #: the :attr:`PoolItem.scores` entry this strategy ranks by (``None``: it reads no score)
    score_key: str | None = None

    def rank(
        self,
        pool: Sequence[PoolItem],
        *,
        k: int | None = None,
        labelled: Sequence[PoolItem] = (),
        rng: np.random.Generator,
    ) -> list[Ranked]:
        """Every volume of ``pool``, most worth labelling first.

        Args:
            pool: the unlabelled volumes (distinct ids).
            k: the batch size the order is planned for: ``diversity`` runs its greedy for ``k`` picks
                and orders the rest by distance to them, ``hybrid`` makes ``k`` clusters; the others
                ignore it. Default: the whole pool for ``diversity``, ``ceil(sqrt(n))`` clusters for
                ``hybrid``.
            labelled: the volumes already labelled (none of them in ``pool``); ``diversity`` counts
                them as centres, and none at all means cold start.
            rng: breaks ties (and is the randomness of ``random``); the same state gives the same order.

        Raises:
            SelectionError: duplicate ids, a labelled volume in the pool, a bad ``k`` or ``rng``;
                :class:`MissingEmbeddingError` or :class:`MissingScoreError` naming the volumes.
        """
        items = _checked_pool(pool, labelled)
        _check_rng(rng)
        if k is not None:
            _check_k(k)
        if not items:
            return []
        return self._rank(items, k=k, labelled=tuple(labelled), rng=rng)

    def select(
        self,
        pool: Sequence[PoolItem],
        k: int,
        *,
        labelled: Sequence[PoolItem] = (),
        rng: np.random.Generator,
    ) -> list[str]:
        """The ids of the ``k`` volumes to label next, in order (all of them when the pool is smaller;
        none from an empty pool). Arguments and errors as for :meth:`rank`."""
        _check_k(k)
        if k == 0:
            _checked_pool(pool, labelled)
            _check_rng(rng)
            return []
        ranked = self.rank(pool, k=min(k, len(pool)) or None, labelled=labelled, rng=rng)
        return [r.volume_id for r in ranked[:k]]

    @abstractmethod
    def _rank(
        self,
        items: list[PoolItem],
        *,
        k: int | None,
        labelled: tuple[PoolItem, ...],
        rng: np.random.Generator,
    ) -> list[Ranked]: ...


# ---- checks ----------------------------------------------------------------------------------------


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise SelectionError(f"k must be a non-negative integer, got {k!r}")


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise SelectionError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )


def _checked_pool(pool: Sequence[PoolItem], labelled: Sequence[PoolItem]) -> list[PoolItem]:
    items = list(pool)
    for item in (*items, *labelled):
        if not isinstance(item, PoolItem):
            raise SelectionError(f"pool and labelled must hold PoolItems, got a {type(item).__name__}")
    ids = [item.volume_id for item in items]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise SelectionError(f"the pool lists volumes more than once: {_listing(duplicates)}")
    both = sorted(set(ids) & {item.volume_id for item in labelled})
    if both:
        raise SelectionError(f"volumes are both labelled and in the unlabelled pool: {_listing(both)}")
    return items


def _listing(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _embeddings(items: Sequence[PoolItem], *, role: str, needed_by: str) -> np.ndarray:
    """``(n, D)`` float64 embeddings of `items`; clear errors for missing ones or mixed sizes."""
    missing = [item.volume_id for item in items if item.embedding is None]
    if missing:
        raise MissingEmbeddingError(
            f"{needed_by} needs an embedding for every {role} volume; {len(missing)} have none: "
            f"{_listing(missing)} (score them with score_volume, which always adds one)"
        )
    sizes = sorted({item.embedding.shape[0] for item in items})
    if len(sizes) > 1:
        raise SelectionError(
            f"{needed_by}: embeddings of different lengths {sizes} cannot be compared "
            "(were the volumes embedded by different models?)"
        )
    if not items:
        return np.zeros((0, 0))
    return np.stack([item.embedding for item in items]).astype(np.float64)


def _tie_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random tie-breaking key per item (lower wins), drawn once per ranking."""
    return rng.permutation(n)


def _descending(values: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Indices of `values` from the largest down, equal values in the order of `ties`."""
    return np.lexsort((ties, -values))


def _argmax(values: np.ndarray, ties: np.ndarray) -> int:
    best = np.flatnonzero(values == values.max())
    return int(best[np.argmin(ties[best])])


def _distances(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points - centre[None], axis=1)


# ---- strategies ------------------------------------------------------------------------------------


class RandomStrategy(Strategy):
    """A uniformly random order: the baseline. It reads nothing and has no cold start."""

    name = "random"

    def _rank(self, items, *, k, labelled, rng):
        draws = rng.random(len(items))
        order = np.argsort(-draws, kind="stable")
        return [Ranked(items[i].volume_id, float(draws[i]), "random baseline") for i in order]


def _kcenter_order(
    points: np.ndarray, centres: np.ndarray, picks: int, ties: np.ndarray
) -> tuple[list[int], list[float], bool]:
    """Farthest-first traversal of `points` from `centres` ``(m, D)`` (may be empty), `picks` steps.

    Returns the picked indices, each one's distance to the nearest centre or earlier pick at the time,
    and whether the first pick was seeded at the pool's mean (no centres given).
    """
    n = len(points)
    order: list[int] = []
    gaps: list[float] = []
    nearest = np.full(n, np.inf)
    for centre in centres:
        nearest = np.minimum(nearest, _distances(points, centre))
    seeded = len(centres) == 0
    if seeded:  # no centre yet: start from the most typical volume, the one nearest the mean
        to_mean = _distances(points, points.mean(axis=0))
        first = _argmax(-to_mean, ties)
        order.append(first)
        gaps.append(float(to_mean[first]))
        nearest = np.minimum(nearest, _distances(points, points[first]))
    taken = np.zeros(n, dtype=bool)
    taken[order] = True
    while len(order) < min(picks, n):
        candidates = np.where(taken, -np.inf, nearest)
        pick = _argmax(candidates, ties)
        order.append(pick)
        gaps.append(float(nearest[pick]))
        taken[pick] = True
        nearest = np.minimum(nearest, _distances(points, points[pick]))
    return order, gaps, seeded


def _typicality(points: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """TypiClust's typicality of each point: the inverse of its mean distance to its ``neighbours``
    nearest other points (high in dense regions, low for outliers; 0 for a lone point)."""
    n = len(points)
    m = min(neighbours, n - 1)
    if m < 1:
        return np.zeros(n)
    squared = (points**2).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, 1024):  # (1024, n) distances at a time
        block = slice(start, start + 1024)
        d2 = squared[block, None] - 2.0 * points[block] @ points.T + squared[None]
        nearest = np.partition(d2, m, axis=1)[:, : m + 1]  # the m nearest and the point itself (0)
        out[block] = m / np.maximum(np.sqrt(np.maximum(nearest, 0.0)).sum(axis=1), 1e-12)
    return out


def _typical_ranking(points: np.ndarray, n_clusters: int, ties: np.ndarray, prefix: str) -> list[tuple]:
    """Cold start (nothing labelled) as TypiClust does it (Hacohen et al., ICML 2022: with a tiny budget
    typical examples teach more than the outliers farthest-first picks): k-means into `n_clusters`
    groups (seeded in dense regions), the most typical volume of each group (typicality within the
    group), largest group first; then the second most typical of each, and so on. Groups of one volume
    (isolated outliers) come last.

    Returns ``(index, typicality, reason)`` for every point, in order.
    """
    # density on the scale of a group (about n / n_clusters volumes), not of the whole pool
    density = _typicality(points, neighbours=min(20, math.ceil(len(points) / n_clusters) - 1))
    labels = _kmeans(points, n_clusters, ties, iterations=20, typical=density)
    typical = np.zeros(len(points))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        typical[idx] = _typicality(points[idx])
    members = {
        int(c): sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (-typical[i], ties[i]))
        for c in np.unique(labels)
    }
    groups = sorted(members, key=lambda c: (len(members[c]) == 1, -len(members[c]), ties[members[c][0]]))
    ranking = []
    for position in range(max(len(m) for m in members.values())):
        for number, c in enumerate(groups, 1):
            if position < len(members[c]) and (len(members[c]) > 1 or position == 0):
                i = members[c][position]
                where = "most typical" if position == 0 else f"#{position + 1} most typical"
                reason = (
                    f"{prefix}{where} of group {number}/{len(groups)} ({len(members[c])} volumes, "
                    f"typicality {typical[i]:.3f})"
                )
                ranking.append((i, float(typical[i]), reason))
    singles = {i for i, _, _ in ranking if len(members[int(labels[i])]) == 1}
    return [r for r in ranking if r[0] not in singles] + [r for r in ranking if r[0] in singles]


class DiversityStrategy(Strategy):
    """k-center greedy (core-set) on the volume embeddings: each pick is the volume farthest from every
    labelled volume and every earlier pick, so a batch covers the feature space and holds no
    near-duplicates. With nothing labelled (cold start) there is no centre to be far from, and
    farthest-first would pick the pool's outliers; it takes the most typical volume of each of ``k``
    k-means groups instead (:func:`_typical_ranking`).

    Scores are Euclidean distances between embeddings (for L2-normalised embeddings, in ``[0, 2]``).
    Beyond the ``k`` greedy picks the rest of the pool follows by distance to the picked and labelled
    volumes, farthest first (greedy over the whole pool costs ``O(n^2 D)``).
    """

    name = "diversity"

    def _rank(self, items, *, k, labelled, rng, why: str = ""):
        points = _embeddings(items, role="pool", needed_by=f"{self.name} selection{why and ' ' + why}")
        centres = _embeddings(labelled, role="labelled", needed_by=f"{self.name} selection")
        if len(centres) and centres.shape[1] != points.shape[1]:
            raise SelectionError(
                f"pool embeddings have {points.shape[1]} values, labelled ones {centres.shape[1]}"
            )
        ties = _tie_order(len(items), rng)
        prefix = f"{why}: " if why else ""
        if not len(centres):
            n_clusters = min(k or math.ceil(math.sqrt(len(items))), len(items))
            return [
                Ranked(items[i].volume_id, score, reason)
                for i, score, reason in _typical_ranking(points, n_clusters, ties, prefix)
            ]
        order, gaps, _ = _kcenter_order(points, centres, k or len(items), ties)
        ranked = [
            Ranked(
                items[i].volume_id,
                gap,
                f"{prefix}farthest from labelled and chosen volumes (distance {gap:.3f})",
            )
            for i, gap in zip(order, gaps, strict=True)
        ]
        if len(order) < len(items):
            nearest = np.full(len(items), np.inf)
            for centre in (*centres, *points[order]):
                nearest = np.minimum(nearest, _distances(points, centre))
            chosen = set(order)
            for i in _descending(nearest, ties):
                if int(i) not in chosen:
                    ranked.append(
                        Ranked(
                            items[i].volume_id,
                            float(nearest[i]),
                            f"{prefix}distance to the nearest labelled or chosen volume {nearest[i]:.3f}",
                        )
                    )
        return ranked


def _cold_start(strategy: Strategy, items: list[PoolItem], labelled: tuple[PoolItem, ...]) -> str:
    """Why `strategy` cannot rank by its score yet ("" if it can); a partly scored pool is an error."""
    key = strategy.score_key
    scored = [item.scores.get(key) is not None for item in items]
    if any(scored) and not all(scored):
        missing = [item.volume_id for item, has in zip(items, scored, strict=True) if not has]
        raise MissingScoreError(
            f"{strategy.name} ranks by the {key!r} score, which {len(missing)} of {len(items)} pool volumes "
            f"lack: {_listing(missing)}; score the whole pool with the same model first"
        )
    if not labelled:
        return "cold start (no labelled volume yet), chosen for diversity"
    if not any(scored):
        return f"cold start (no {key!r} score: no adapted model yet), chosen for diversity"
    return ""


class UncertaintyStrategy(Strategy):
    """The volumes the model is least sure about first, by one stored score (larger = less certain).

    Args:
        key: the score to rank by; default the strategy's own name (the volume score its scorer
            writes). A per-class score such as ``"entropy/anterior"`` focuses on one structure.
    """

    name: ClassVar[str]

    def __init__(self, *, key: str | None = None) -> None:
        self.score_key = key or self.name

    def _rank(self, items, *, k, labelled, rng):
        why = _cold_start(self, items, labelled)
        if why:
            return DiversityStrategy()._rank(items, k=k, labelled=labelled, rng=rng, why=why)
        values = np.array([item.scores[self.score_key] for item in items])
        order = _descending(values, _tie_order(len(items), rng))
        return [
            Ranked(items[i].volume_id, float(values[i]), f"{self.score_key} {values[i]:.3f}") for i in order
        ]


class EntropyStrategy(UncertaintyStrategy):
    """Highest aggregated predictive entropy first."""

    name = "entropy"


class TTAStrategy(UncertaintyStrategy):
    """Highest test-time-augmentation disagreement first."""

    name = "tta"


class MCDropoutStrategy(UncertaintyStrategy):
    """Highest Monte Carlo dropout variance first."""

    name = "mc_dropout"


class DisagreementStrategy(UncertaintyStrategy):
    """Highest disagreement between two models (``1 - soft Dice``) first."""

    name = "disagreement"


def _dense_seeds(points: np.ndarray, n: int, ties: np.ndarray, typical: np.ndarray) -> list[int]:
    """Farthest-first weighted by typicality: the most typical point, then each time the point with the
    largest ``typicality x distance to the seeds so far`` (far, but not an isolated outlier)."""
    order = [_argmax(typical, ties)]
    nearest = _distances(points, points[order[0]])
    while len(order) < min(n, len(points)):
        weighted = nearest * typical
        weighted[order] = -np.inf
        order.append(_argmax(weighted, ties))
        nearest = np.minimum(nearest, _distances(points, points[order[-1]]))
    return order


def _kmeans(
    points: np.ndarray,
    n_clusters: int,
    ties: np.ndarray,
    *,
    iterations: int,
    typical: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster index of every point: Lloyd's k-means started from k-center greedy centres (or, given
    each point's typicality, from :func:`_dense_seeds`, so outliers do not take clusters of their own).

    Farthest-first starting centres fall in separate groups whenever the groups are farther apart than
    they are wide, and Lloyd's steps then keep them there; k-means++ could put two in one group.
    """
    if typical is None:
        order, _, _ = _kcenter_order(points, np.zeros((0, points.shape[1])), n_clusters, ties)
    else:
        order = _dense_seeds(points, n_clusters, ties, typical)
    centres = points[order].copy()
    labels = np.full(len(points), -1)
    for _ in range(iterations):
        # squared distances without an (n, k, D) array
        squared = (centres**2).sum(axis=1)[None] - 2.0 * points @ centres.T
        new = squared.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(len(centres)):
            members = labels == c
            if members.any():  # an emptied cluster keeps its centre
                centres[c] = points[members].mean(axis=0)
    return labels


class HybridStrategy(Strategy):
    """Uncertainty within diverse clusters: a batch of ``k`` without near-duplicates.

    The pool is clustered into ``k`` groups on the embeddings (k-means started from k-center greedy
    centres); the batch takes the most uncertain volume of each group, groups ordered by that
    uncertainty. The rest of the pool follows round by round (the second most uncertain of each group,
    then the third, ...). Cold start falls back to ``diversity`` as the uncertainty strategies do.

    Args:
        key: the uncertainty score to rank by within a cluster (default ``"entropy"``).
        iterations: at most this many k-means steps.
    """

    name = "hybrid"

    def __init__(self, *, key: str = "entropy", iterations: int = 20) -> None:
        if iterations < 1:
            raise SelectionError(f"iterations must be at least 1, got {iterations}")
        self.score_key = key
        self.iterations = int(iterations)

    def _rank(self, items, *, k, labelled, rng):
        why = _cold_start(self, items, labelled)
        if why:
            return DiversityStrategy()._rank(items, k=k, labelled=labelled, rng=rng, why=why)
        points = _embeddings(items, role="pool", needed_by=f"{self.name} selection")
        n = len(items)
        n_clusters = min(k or math.ceil(math.sqrt(n)), n)
        ties = _tie_order(n, rng)
        labels = _kmeans(points, n_clusters, ties, iterations=self.iterations)
        values = np.array([item.scores[self.score_key] for item in items])
        # within each cluster, most uncertain first; then interleave the clusters round by round
        by_value = _descending(values, ties)
        members = {c: [int(i) for i in by_value if labels[i] == c] for c in sorted(set(labels.tolist()))}
        # clusters are numbered by the uncertainty of their top volume, the order the batch takes them
        tops = sorted(members, key=lambda c: (-values[members[c][0]], ties[members[c][0]]))
        names = {c: number for number, c in enumerate(tops, 1)}
        ranked = []
        for position in range(max(len(m) for m in members.values())):
            layer = [m[position] for m in members.values() if position < len(m)]
            for i in sorted(layer, key=lambda i: (-values[i], ties[i])):
                cluster = members[int(labels[i])]
                number = names[int(labels[i])]
                where = "most uncertain" if position == 0 else f"#{position + 1} most uncertain"
                ranked.append(
                    Ranked(
                        items[i].volume_id,
                        float(values[i]),
                        f"{where} of cluster {number}/{len(members)} ({len(cluster)} volumes): "
                        f"{self.score_key} {values[i]:.3f}",
                    )
                )
        return ranked


class _Registry(dict[str, type[Strategy]]):
    """A name -> strategy class dict whose error for an unknown name lists the known ones."""

    def __missing__(self, name: str) -> type[Strategy]:
        raise UnknownStrategyError(f"unknown selection strategy {name!r}; known: {', '.join(sorted(self))}")


STRATEGIES: dict[str, type[Strategy]] = _Registry(
    {
        s.name: s
        for s in (
            RandomStrategy,
            EntropyStrategy,
            TTAStrategy,
            MCDropoutStrategy,
            DisagreementStrategy,
            DiversityStrategy,
            HybridStrategy,
        )
    }
)


def get_strategy(name: str, **options: Any) -> Strategy:
    """A new strategy registered as ``name``, built with ``options`` (e.g. ``key="entropy/anterior"``).

    Raises:
        UnknownStrategyError: no such name (lists the known ones); TypeError for an unknown option.
    """
    return STRATEGIES[name](**options)
