"""Uncertainty of a segmentation, voxel by voxel, and its reduction to one score per volume and class.

Everything here is model-agnostic: a model is a callable handed in, probabilities are arrays.

Shapes: ``probs`` is ``(C, I, J, K)`` (any spatial rank works). By default the channels are
*independent* per-class sigmoid probabilities (partial label sets: a voxel may be in two classes or
none), so entropy is the binary entropy of each class. ``exclusive=True`` means softmax-style
probabilities that sum to 1 over ``C``.

Voxel maps (``(C, ...)`` float32, larger = less certain):

- :func:`voxel_entropy`: binary entropy in bits, in ``[0, 1]`` (1 at p = 0.5, 0 at p in {0, 1});
  exclusive: Shannon entropy over the classes divided by ``log C``, one channel ``(1, ...)``.
- :func:`tta_disagreement`: the variance, across test-time augmentations (flips along the spatial
  axes, optional intensity jitter) mapped back to the original frame, of each class probability;
  in ``[0, 0.25]``.
- :func:`mc_dropout_variance`: the same variance across ``n`` stochastic passes with only the dropout
  layers active.

Per class, no map: :func:`model_disagreement` is ``1 - soft Dice`` between two models' probabilities.

Volume scores (:func:`aggregate`): a plain mean over the volume would be dominated by background,
which is large and confidently empty, so a volume with a small uncertain structure would rank like an
empty one. Reduce instead over the *predicted foreground dilated by a margin* (:func:`foreground_region`,
``mask=``) -- the boundary, where the uncertainty of a segmentation lives, is inside the margin -- or over
the ``top_fraction`` most uncertain voxels (``reduction="topk_mean"``), or both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ALL_FLIPS",
    "DEFAULT_FLIPS",
    "NoDropoutError",
    "Spread",
    "VolumeScore",
    "aggregate",
    "foreground_region",
    "mc_dropout_variance",
    "model_disagreement",
    "tta_disagreement",
    "voxel_entropy",
]

ArrayLike = np.ndarray | torch.Tensor
Predict = Callable[[torch.Tensor], torch.Tensor]

# Spatial axes to flip for each test-time view (axes of (I, J, K)); () is the unaugmented view.
DEFAULT_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))

_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class Spread(NamedTuple):
    """Mean and variance over several predictions of the same volume, both ``(C, I, J, K)`` float32."""

    mean: np.ndarray
    variance: np.ndarray


@dataclass(frozen=True)
class VolumeScore:
    """One volume's score: ``per_class`` (one per channel of the map or mask), ``overall`` their mean."""

    overall: float
    per_class: tuple[float, ...]


class NoDropoutError(ValueError):
    """MC dropout was asked of a model with no active dropout layer (its variance would be 0 everywhere)."""


def _tensor(x: ArrayLike, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    out = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    return out.detach().to(dtype)


def _probs(x: ArrayLike) -> torch.Tensor:
    p = _tensor(x)
    if p.ndim < 2:
        raise ValueError(f"probabilities must be channel-first (C, ...), got shape {tuple(p.shape)}")
    return p.clamp(0.0, 1.0)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)


def voxel_entropy(probs: ArrayLike, *, exclusive: bool = False) -> np.ndarray:
    """Entropy per voxel, normalised to ``[0, 1]``.

    probs: ``(C, I, J, K)``. Returns ``(C, I, J, K)``: each class's binary entropy in bits; or, with
    ``exclusive`` (softmax probabilities, ``C >= 2``), ``(1, I, J, K)``: ``-sum_c p_c log p_c / log C``.
    """
    p = _probs(probs)
    if exclusive:
        if p.shape[0] < 2:
            raise ValueError("exclusive probabilities need at least 2 channels")
        h = -torch.special.xlogy(p, p).sum(dim=0, keepdim=True) / math.log(p.shape[0])
    else:
        q = 1.0 - p
        h = -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / math.log(2.0)
    return _numpy(h.clamp(0.0, 1.0))


def _flip(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    # x: (N, C, I, J, K); spatial axis a is dim 2 + a
    return torch.flip(x, dims=[2 + a for a in axes]) if axes else x


def _spread(predictions: list[torch.Tensor]) -> Spread:
    stack = torch.stack(predictions).to(torch.float64)
    return Spread(_numpy(stack.mean(dim=0)), _numpy(stack.var(dim=0, unbiased=False)))


def _image(image: ArrayLike) -> torch.Tensor:
    x = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
    if x.ndim != 4:
        raise ValueError(f"image must be (C_in, I, J, K), got shape {tuple(x.shape)}")
    return x.detach().to(torch.float32)


def _predict_one(predict: Predict, x: torch.Tensor) -> torch.Tensor:
    out = predict(x[None])
    if out.ndim != x.ndim + 1 or out.shape[0] != 1 or out.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"predict must map (1, C_in, *S) to (1, C, *S); got {tuple(out.shape)} for {tuple(x[None].shape)}"
        )
    return out[0].detach().to(torch.float64)


@torch.no_grad()
def tta_disagreement(
    predict: Predict,
    image: ArrayLike,
    *,
    flips: Sequence[Sequence[int]] = DEFAULT_FLIPS,
    jitter: float = 0.0,
    seed: int = 0,
) -> Spread:
    """Test-time augmentation: predict each flipped view, flip it back, take mean and variance per voxel.

    Args:
        predict: ``(1, C_in, I, J, K)`` tensor -> ``(1, C, I, J, K)`` probabilities (sigmoid or softmax
            already applied; wrap a sliding-window inferer here for large volumes).
        image: ``(C_in, I, J, K)``, preprocessed (on the network's grid, intensities in ``[0, 1]``).
        flips: one entry per view, the spatial axes (0, 1, 2) it flips; at least two views.
        jitter: when > 0, every view's intensities become ``x * (1 + jitter * a) + jitter * b`` with
            ``a, b ~ N(0, 1)`` drawn per view from a generator seeded with ``seed``.
        seed: makes the jitter reproducible; without jitter the result does not depend on it.

    Returns:
        :class:`Spread` of ``(C, I, J, K)``; ``variance`` is the disagreement map, in ``[0, 0.25]``.
    """
    views = [tuple(int(a) for a in axes) for axes in flips]
    if len(views) < 2:
        raise ValueError("test-time augmentation needs at least two views")
    if any(a not in (0, 1, 2) for axes in views for a in axes):
        raise ValueError(f"flip axes must be spatial axes 0, 1 or 2, got {views}")
    x = _image(image)
    generator = torch.Generator().manual_seed(int(seed))
    predictions = []
    for axes in views:
        view = x
        if jitter > 0:
            a, b = torch.randn(2, generator=generator, dtype=torch.float64).tolist()
            view = x * (1.0 + jitter * a) + jitter * b
        flipped = _flip(view[None], axes)[0]
        predictions.append(_flip(_predict_one(predict, flipped)[None], axes)[0])
    return _spread(predictions)


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


@torch.no_grad()
def mc_dropout_variance(
    model: nn.Module,
    image: ArrayLike,
    *,
    n: int = 8,
    seed: int = 0,
    predict: Predict | None = None,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.sigmoid,
) -> Spread:
    """Monte Carlo dropout: ``n`` passes with the model in eval mode except its dropout layers.

    Args:
        model: the network; its ``nn.Dropout*`` layers with ``p > 0`` are switched to train mode for the
            passes and every module's mode is restored afterwards (also on error).
        image: ``(C_in, I, J, K)``.
        n: number of passes (at least 2).
        seed: seeds the dropout masks in a forked RNG: the same seed gives identical results and the
            caller's global RNG state is left untouched.
        predict: how to run ``model`` (e.g. through a sliding-window inferer): ``(1, C_in, ...)`` ->
            ``(1, C, ...)`` probabilities; default ``activation(model(x))``.
        activation: applied to ``model(x)`` when ``predict`` is not given; ``None`` if the model already
            returns probabilities.

    Returns:
        :class:`Spread` of ``(C, I, J, K)``.

    Raises:
        NoDropoutError: the model has no dropout layer with ``p > 0`` -- every pass would be identical and
            the variance 0 everywhere, which would silently rank every volume alike.
    """
    if n < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, got n={n}")
    dropout = _dropout_layers(model)
    if not dropout:
        raise NoDropoutError(
            f"{type(model).__name__} has no dropout layer with p > 0; "
            "MC-dropout variance would be 0 everywhere"
        )
    if predict is None:

        def predict(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            return activation(out) if activation is not None else out

    x = _image(image).to(next(model.parameters(), torch.empty(0)).device)
    modes = [(m, m.training) for m in model.modules()]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        model.eval()
        for m in dropout:
            m.train()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            predictions = [_predict_one(predict, x).cpu() for _ in range(n)]
    finally:
        for m, training in modes:
            m.training = training
    return _spread(predictions)


def model_disagreement(probs_a: ArrayLike, probs_b: ArrayLike, *, eps: float = 1e-8) -> np.ndarray:
    """``1 - soft Dice`` per class between two models' probabilities (e.g. a 3D net and SAM-refined).

    probs_a, probs_b: ``(C, I, J, K)``. Soft Dice is ``2 sum(a b) / (sum a^2 + sum b^2)`` (the squared
    form, so identical predictions give exactly 0 even where they are soft); a class both leave empty
    counts as agreement (0). Returns ``(C,)`` float64 in ``[0, 1]``. Being a ratio over the foreground it
    needs no background masking, unlike the voxel maps.
    """
    a, b = _probs(probs_a), _probs(probs_b)
    if a.shape != b.shape:
        raise ValueError(f"probabilities differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    dims = tuple(range(1, a.ndim))
    overlap = 2.0 * (a * b).sum(dim=dims)
    total = (a * a).sum(dim=dims) + (b * b).sum(dim=dims)
    dice = torch.where(total > eps, overlap / total.clamp_min(eps), torch.ones_like(total))
    return (1.0 - dice).clamp(0.0, 1.0).cpu().numpy()


def foreground_region(probs: ArrayLike, *, threshold: float = 0.5, margin: int = 3) -> np.ndarray:
    """Where a class is predicted (``p >= threshold``), grown by ``margin`` voxels: ``(C, I, J, K)`` bool.

    The growth is a cube of side ``2 * margin + 1`` (Chebyshev distance), so the region holds the whole
    boundary band where a segmentation is uncertain. Spatial rank 3 (or fewer) only.
    """
    p = _probs(probs)
    region = (p >= threshold).to(torch.float32)
    if margin > 0:
        spatial = p.ndim - 1
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        region = pool(region[None], kernel_size=2 * margin + 1, stride=1, padding=margin)[0]
    return region.bool().cpu().numpy()


def aggregate(
    voxel_map: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    reduction: Literal["mean", "topk_mean"] = "mean",
    top_fraction: float = 0.05,
) -> VolumeScore:
    """Reduce a voxel map to one score per class and one per volume.

    Args:
        voxel_map: ``(C, I, J, K)`` (or ``(I, J, K)``, one class).
        mask: voxels to reduce over: ``None`` (all), ``(I, J, K)`` (the same for every class) or
            ``(C', I, J, K)`` per class, e.g. :func:`foreground_region`. A one-channel map (exclusive
            entropy) with a ``C'``-channel mask gives one score per class region.
        reduction: ``"mean"`` over the masked voxels, or ``"topk_mean"``: the mean of the
            ``ceil(top_fraction * n)`` largest of them.

    Returns:
        :class:`VolumeScore`; a class whose region is empty (nothing predicted, nothing near) scores 0,
        and ``overall`` is the mean over classes.
    """
    values = _tensor(voxel_map)
    if values.ndim == 3:
        values = values[None]
    if mask is None:
        regions = torch.ones_like(values, dtype=torch.bool)
    else:
        regions = torch.as_tensor(np.asarray(mask)).bool()
        if regions.ndim == values.ndim - 1:
            regions = regions[None]
        if regions.shape[1:] != values.shape[1:]:
            raise ValueError(f"mask {tuple(regions.shape)} does not fit the map {tuple(values.shape)}")
    if values.shape[0] == 1 and regions.shape[0] > 1:
        values = values.expand(regions.shape[0], *values.shape[1:])
    elif regions.shape[0] == 1:
        regions = regions.expand(values.shape[0], *values.shape[1:])
    elif regions.shape[0] != values.shape[0]:
        raise ValueError(f"mask has {regions.shape[0]} channels, the map {values.shape[0]}")
    if reduction not in ("mean", "topk_mean"):
        raise ValueError(f"reduction must be 'mean' or 'topk_mean', got {reduction!r}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    scores = []
    for channel, region in zip(values, regions, strict=True):
        selected = channel[region]
        if selected.numel() == 0:
            scores.append(0.0)
        elif reduction == "mean":
            scores.append(float(selected.mean()))
        else:
            k = max(1, math.ceil(top_fraction * selected.numel()))
            scores.append(float(torch.topk(selected.flatten(), k, sorted=False).values.mean()))
    return VolumeScore(overall=float(np.mean(scores)), per_class=tuple(scores))
