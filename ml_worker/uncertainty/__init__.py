"""Uncertainty and diversity of unlabelled volumes: voxel maps, volume scores, embeddings, scorers.

Scorers (heavy: they run models) fill :class:`PoolItem` scores and embeddings; selection strategies
(cheap, pure, seeded) read them and choose -- they live elsewhere.
"""

from ml_worker.uncertainty.embedding import intensity_embedding, volume_embedding
from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scorers import SCORERS, ScoringConfig, ScoringInput, get_scorer, score_volume
from ml_worker.uncertainty.scores import (
    ALL_FLIPS,
    DEFAULT_FLIPS,
    NoDropoutError,
    Spread,
    VolumeScore,
    aggregate,
    foreground_region,
    mc_dropout_variance,
    model_disagreement,
    tta_disagreement,
    voxel_entropy,
)

__all__ = [
    "ALL_FLIPS",
    "DEFAULT_FLIPS",
    "SCORERS",
    "NoDropoutError",
    "PoolItem",
    "ScoringConfig",
    "ScoringInput",
    "Spread",
    "VolumeScore",
    "aggregate",
    "foreground_region",
    "get_scorer",
    "intensity_embedding",
    "mc_dropout_variance",
    "model_disagreement",
    "score_volume",
    "tta_disagreement",
    "volume_embedding",
    "voxel_entropy",
]
