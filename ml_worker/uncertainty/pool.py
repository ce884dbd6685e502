"""What scoring leaves for selection: one :class:`PoolItem` per unlabelled volume.

Scorers (heavy: they run models) fill the items; strategies (cheap, pure, seeded) only read them
and choose. Items are immutable: a re-score makes new ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

__all__ = ["PoolItem"]


@dataclass(frozen=True, eq=False)
class PoolItem:
    """A volume of the pool with its scores and, when available, its embedding.

    volume_id: the platform's id of the volume (a string, opaque here).
    scores: name -> value, larger = more worth labelling; e.g. ``"entropy"`` (the volume score) and
        ``"entropy/anterior"`` (per class). Stored as a read-only copy.
    embedding: ``(D,)`` float32, L2-normalised (see :mod:`ml_worker.uncertainty.embedding`), or ``None``.
        Stored as a read-only copy. Items compare by identity (arrays have no single truth value).
    """

    volume_id: str
    scores: Mapping[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.volume_id, str) or not self.volume_id:
            raise ValueError(f"volume_id must be a non-empty string, got {self.volume_id!r}")
        scores = {str(k): float(v) for k, v in self.scores.items()}
        if not all(np.isfinite(v) for v in scores.values()):
            raise ValueError(f"scores of {self.volume_id} must be finite, got {scores}")
        object.__setattr__(self, "scores", MappingProxyType(scores))
        if self.embedding is not None:
            embedding = np.array(self.embedding, dtype=np.float32, copy=True)
            if embedding.ndim != 1:
                raise ValueError(f"embedding must be one vector (D,), got shape {embedding.shape}")
            embedding.setflags(write=False)
            object.__setattr__(self, "embedding", embedding)
