"""Scoring methods by name: each turns one volume (and the models, as callables) into named scores.

A scorer is ``scorer(inputs: ScoringInput, config: ScoringConfig) -> dict[str, float]`` returning
``{name: volume score, f"{name}/{class}": per-class score}``; :data:`SCORERS` maps names to scorers
and :func:`score_volume` runs several of them on one volume and returns the :class:`PoolItem`.

================  =============================================  =====================================
name              volume score                                   needs
================  =============================================  =====================================
``entropy``       voxel entropy, aggregated                      ``predict`` or ``probs``
``tta``           flip (+ jitter) TTA variance, aggregated       ``predict``
``mc_dropout``    MC-dropout variance, aggregated                ``model``; ``predict`` or ``probs``
``disagreement``  ``1 - soft Dice`` of two models, class mean    ``predict_other``; ``predict``/``probs``
================  =============================================  =====================================

"Aggregated" = :func:`~ml_worker.uncertainty.scores.aggregate` over the region where the clean
prediction (``predict(image)``, computed once per volume) has each class, dilated by
``config.margin`` voxels, with ``config.reduction``. With ``exclusive`` (softmax) probabilities,
channel 0 is background and is not scored. The embedding is :func:`volume_embedding` of
``features(image)`` when a feature extractor is given, else :func:`intensity_embedding` (cold start).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from ml_worker.uncertainty.embedding import intensity_embedding, volume_embedding
from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scores import (
    DEFAULT_FLIPS,
    aggregate,
    foreground_region,
    mc_dropout_variance,
    model_disagreement,
    tta_disagreement,
    voxel_entropy,
)

__all__ = ["SCORERS", "ScoringConfig", "ScoringInput", "get_scorer", "score_volume"]

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ScoringInput:
    """One volume and the models to score it with (callables; nothing is loaded here).

    image: ``(C_in, X, Y, Z)`` preprocessed (network grid, intensities in ``[0, 1]``).
    class_names: one per scored channel (all channels; with ``exclusive``, all but channel 0).
    predict: ``(1, C_in, X, Y, Z)`` -> ``(1, C, X, Y, Z)`` probabilities.
    model: the network for MC dropout (``predict`` runs it when given, else ``sigmoid(model(x))``, or
        softmax over channels with ``exclusive``).
    predict_other: a second model (e.g. the SAM-refined result) in the form of ``predict``.
    features: ``(1, C_in, X, Y, Z)`` -> ``(1, F, ...)`` feature map for the embedding.
    probs: ``predict(image)[0]`` ``(C, X, Y, Z)`` when already computed (e.g. at pre-segmentation).
    exclusive: softmax probabilities (channel 0 background) instead of independent sigmoids.
    """

    volume_id: str
    image: torch.Tensor
    class_names: tuple[str, ...]
    predict: Predict | None = None
    model: nn.Module | None = None
    predict_other: Predict | None = None
    features: Predict | None = None
    probs: np.ndarray | None = None
    exclusive: bool = False


@dataclass(frozen=True)
class ScoringConfig:
    """How scores are computed and reduced; ``seed`` makes every stochastic scorer reproducible."""

    seed: int = 0
    reduction: Literal["mean", "topk_mean"] = "mean"
    top_fraction: float = 0.05
    threshold: float = 0.5
    margin: int = 3
    tta_flips: tuple[tuple[int, ...], ...] = DEFAULT_FLIPS
    tta_jitter: float = 0.0
    mc_samples: int = 8


Scorer = Callable[[ScoringInput, ScoringConfig], dict[str, float]]


def _require(inputs: ScoringInput, name: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"scorer {name!r} needs {', '.join(missing)} for volume {inputs.volume_id}")


def _scored(inputs: ScoringInput, x: np.ndarray) -> np.ndarray:
    """The scored channels of a ``(C, ...)`` array (all but background for exclusive probabilities)."""
    return x[1:] if inputs.exclusive and x.shape[0] > 1 else x


def _named(name: str, inputs: ScoringInput, overall: float, per_class: Sequence[float]) -> dict[str, float]:
    if len(per_class) != len(inputs.class_names):
        raise ValueError(
            f"{len(per_class)} scored channels but {len(inputs.class_names)} class names {inputs.class_names}"
        )
    return {name: float(overall)} | {
        f"{name}/{c}": float(v) for c, v in zip(inputs.class_names, per_class, strict=True)
    }


def _aggregated(
    name: str, inputs: ScoringInput, config: ScoringConfig, voxel_map: np.ndarray
) -> dict[str, float]:
    region = foreground_region(
        _scored(inputs, inputs.probs), threshold=config.threshold, margin=config.margin
    )
    score = aggregate(
        voxel_map if voxel_map.shape[0] == 1 else _scored(inputs, voxel_map),
        mask=region,
        reduction=config.reduction,
        top_fraction=config.top_fraction,
    )
    return _named(name, inputs, score.overall, score.per_class)


def entropy_scorer(inputs: ScoringInput, config: ScoringConfig) -> dict[str, float]:
    """Aggregated voxel entropy of the clean prediction."""
    _require(inputs, "entropy", "probs")
    return _aggregated("entropy", inputs, config, voxel_entropy(inputs.probs, exclusive=inputs.exclusive))


def tta_scorer(inputs: ScoringInput, config: ScoringConfig) -> dict[str, float]:
    """Aggregated variance over flipped (and jittered) views."""
    _require(inputs, "tta", "predict", "probs")
    spread = tta_disagreement(
        inputs.predict, inputs.image, flips=config.tta_flips, jitter=config.tta_jitter, seed=config.seed
    )
    return _aggregated("tta", inputs, config, spread.variance)


def mc_dropout_scorer(inputs: ScoringInput, config: ScoringConfig) -> dict[str, float]:
    """Aggregated variance over MC-dropout passes (raises NoDropoutError for a model without dropout)."""
    _require(inputs, "mc_dropout", "model", "probs")
    spread = mc_dropout_variance(
        inputs.model,
        inputs.image,
        n=config.mc_samples,
        seed=config.seed,
        predict=inputs.predict,
        activation=(lambda x: torch.softmax(x, dim=1)) if inputs.exclusive else torch.sigmoid,
    )
    return _aggregated("mc_dropout", inputs, config, spread.variance)


def disagreement_scorer(inputs: ScoringInput, config: ScoringConfig) -> dict[str, float]:
    """``1 - soft Dice`` per class between ``predict`` and ``predict_other``; the volume score is the mean."""
    _require(inputs, "disagreement", "predict_other", "probs")
    with torch.no_grad():
        other = inputs.predict_other(torch.as_tensor(inputs.image)[None])[0].detach().cpu().numpy()
    per_class = model_disagreement(_scored(inputs, inputs.probs), _scored(inputs, other))
    return _named("disagreement", inputs, float(np.mean(per_class)), per_class.tolist())


class _Registry(dict[str, Scorer]):
    """A name -> scorer dict whose KeyError for an unknown name lists the known ones."""

    def __missing__(self, name: str) -> Scorer:
        raise KeyError(f"unknown scorer {name!r}; known: {', '.join(sorted(self))}")


SCORERS: dict[str, Scorer] = _Registry(
    entropy=entropy_scorer,
    tta=tta_scorer,
    mc_dropout=mc_dropout_scorer,
    disagreement=disagreement_scorer,
)


def get_scorer(name: str) -> Scorer:
    """The scorer registered as ``name``; an unknown name raises a KeyError listing the known ones."""
    return SCORERS[name]


def score_volume(
    inputs: ScoringInput, *, methods: Sequence[str], config: ScoringConfig | None = None
) -> PoolItem:
    """Run the scorers named in ``methods`` on one volume; return its :class:`PoolItem` with embedding.

    Names are checked before any model runs. The clean prediction is computed once (unless
    ``inputs.probs`` holds it) and shared by all scorers.
    """
    config = config or ScoringConfig()
    scorers = [get_scorer(name) for name in methods]
    image = torch.as_tensor(inputs.image)
    if inputs.probs is None and inputs.predict is not None:
        with torch.no_grad():
            probs = inputs.predict(image[None].to(torch.float32))[0].detach().cpu().numpy()
        inputs = replace(inputs, probs=probs)
    scores: dict[str, float] = {}
    for scorer in scorers:
        scores.update(scorer(inputs, config))
    if inputs.features is not None:
        with torch.no_grad():
            embedding = volume_embedding(inputs.features(image[None].to(torch.float32))[0])
    else:
        embedding = intensity_embedding(image)
    return PoolItem(volume_id=inputs.volume_id, scores=scores, embedding=embedding)
