"""One fixed-length, L2-normalised vector per volume, for diversity (feature-space coverage).

- :func:`volume_embedding`: from a network's feature map (e.g. the bottleneck of the 3D net or the
  image-encoder output): global average and global max pooling, concatenated, L2-normalised.
- :func:`intensity_embedding`: model-free, for the cold start before any model features exist: a
  histogram of the per-volume normalised intensities plus a coarse spatial thumbnail. Compute it on the
  preprocessed image (RAS grid) so thumbnails of different volumes are in the same orientation.

Both are deterministic (no randomness; float64 arithmetic) and return float32. Cosine similarity
between two embeddings is their dot product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["intensity_embedding", "volume_embedding"]


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(vector)
    return vector / norm if norm > 0 else torch.zeros_like(vector)


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return (torch.as_tensor(x) if isinstance(x, np.ndarray) else x).detach().cpu().to(torch.float64)


def volume_embedding(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(F, *spatial)`` feature map (no batch axis) -> ``(2F,)``: [mean over space, max over space], L2 = 1.

    An all-zero feature map gives the zero vector.
    """
    x = _tensor(features)
    if x.ndim < 2:
        raise ValueError(f"features must be (F, *spatial), got shape {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)
    return _unit(torch.cat([flat.mean(dim=1), flat.amax(dim=1)])).numpy().astype(np.float32)


def intensity_embedding(
    image: np.ndarray | torch.Tensor,
    *,
    bins: int = 32,
    thumbnail: Sequence[int] = (4, 4, 4),
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray:
    """Model-free embedding of ``(I, J, K)`` or ``(C, I, J, K)``: ``(C * (bins + prod(thumbnail)),)``.

    Per channel, intensities are clipped to their ``percentiles`` and scaled to ``[0, 1]`` (so scanners
    and intensity units do not matter), then described by a ``bins``-bin histogram (fraction of voxels)
    and by their mean over a ``thumbnail`` grid of blocks (adaptive average pooling). Each part is
    L2-normalised so neither dominates by size, and the whole vector is L2-normalised.
    """
    x = _tensor(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"image must be (I, J, K) or (C, I, J, K), got shape {tuple(x.shape)}")
    parts = []
    for channel in x:
        lo, hi = np.percentile(channel.numpy(), list(percentiles))
        scaled = ((channel - lo) / (hi - lo)).clamp(0.0, 1.0) if hi > lo else torch.zeros_like(channel)
        histogram = torch.histc(scaled, bins=bins, min=0.0, max=1.0) / scaled.numel()
        blocks = F.adaptive_avg_pool3d(scaled[None, None], tuple(int(t) for t in thumbnail)).flatten()
        parts += [_unit(histogram), _unit(blocks)]
    return _unit(torch.cat(parts)).numpy().astype(np.float32)
