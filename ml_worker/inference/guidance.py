"""Prompts (clicks, boxes) -> guidance channels of the native 3D network, on the network's grid.

Prompts are given in voxel coordinates of the *source* volume (:mod:`ml_worker.inference.prompts`,
``[i, j, k]`` of :mod:`ml_worker.io.volume`); the network runs on the *preprocessed* grid (RAS,
resampled, padded, see :func:`ml_worker.transforms.preprocessing`). Both grids carry an affine to the
same world (RAS mm), and every step of the preprocessing keeps world positions, so a source voxel maps
onto the network grid through ``inv(grid_affine) @ source_affine``: exact for flips, permutations,
resampling, padding and deshearing alike, whatever the pipeline does, as long as it keeps the affine
right (which :func:`ml_worker.transforms.to_source_grid` checks for every prediction).

The guidance is drawn on the network grid itself, not on the source grid and then resampled: a click
stays a ball of the size the network was trained with (``sigma`` in mm, converted with the grid's voxel
size) whatever the source spacing, it cannot vanish when a fine source is resampled to a coarser grid,
and nothing of the source volume's size is allocated per channel (2 channels of a 512x512x300 CT
would be 630 MB).

Encoding (see :mod:`ml_worker.models.native3d`), for the class of channel ``c`` (its label value at
``label_values[c]``), ``4 * C`` channels after the image::

    4c + 0  positive clicks: max over clicks of exp(-d^2 / (2 sigma^2)), d in mm, cut off beyond 3 sigma
    4c + 1  negative clicks: the same
    4c + 2  boxes: 1 on every grid voxel whose centre lies in a box (several boxes: their union)
    4c + 3  the current mask: 1 where the previous label map (``Prompts.mask``) holds the class's value,
            brought onto the grid by the preprocessing itself (nearest neighbour), so it lines up with
            the image exactly

A source box covers its voxels edge to edge (``lo - 0.5`` to ``hi + 0.5``); on the grid it becomes the
axis-aligned hull of its 8 mapped corners (the same box for an orthogonal source; slightly larger for a
sheared one), and never less than the grid voxel at its centre on any axis, so a one-slice box
survives resampling to thicker voxels.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ml_worker.inference.prompts import Box2D, Box3D, PromptError, Prompts, validate_prompts

__all__ = [
    "BOX",
    "MASK",
    "NEGATIVE",
    "PER_CLASS",
    "POSITIVE",
    "RenderGuidance",
    "RenderGuidanced",
    "source_to_grid",
]

POSITIVE, NEGATIVE, BOX, MASK = 0, 1, 2, 3
PER_CLASS = 4
_CUTOFF_SIGMAS = 3.0


def _affine(matrix: Any) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    out = np.asarray(matrix, dtype=np.float64)
    if out.shape != (4, 4):
        raise ValueError(f"an affine must be 4x4, got shape {out.shape}")
    return out


def source_to_grid(ijk: np.ndarray, *, source_affine: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Continuous voxel coordinates on the network grid of source voxel coordinates.

    Args:
        ijk: ``(N, 3)`` voxel coordinates (integer or not) on the source grid.
        source_affine, grid_affine: ``(4, 4)`` voxel -> RAS mm of each grid.

    Returns:
        ``(N, 3)`` float64 voxel coordinates on the grid of ``grid_affine``.
    """
    points = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    transform = np.linalg.solve(_affine(grid_affine), _affine(source_affine))
    return points @ transform[:3, :3].T + transform[:3, 3]


def _box_on_grid(
    box: Box3D, transform: np.ndarray, grid_shape: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    lo, hi = np.asarray(box.lo, float) - 0.5, np.asarray(box.hi, float) + 0.5
    corners = np.stack(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij"), axis=-1).reshape(-1, 3)
    mapped = corners @ transform[:3, :3].T + transform[:3, 3]
    centre = ((lo + hi) / 2.0) @ transform[:3, :3].T + transform[:3, 3]
    out = []
    for axis, size in enumerate(grid_shape):
        first = min(math.ceil(mapped[:, axis].min() - 1e-6), round(centre[axis]))
        last = max(math.floor(mapped[:, axis].max() + 1e-6), round(centre[axis]))
        first, last = max(first, 0), min(last, size - 1)
        if first > last:
            return None  # entirely outside the grid (a crop removed it)
        out.append(slice(first, last + 1))
    return tuple(out)


def grid_spacing(grid_affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each axis of a grid (the lengths of its affine's columns)."""
    return np.linalg.norm(_affine(grid_affine)[:3, :3], axis=0)


def _add_ball(channel: torch.Tensor, centre: np.ndarray, sigma: Sequence[float]) -> None:
    """Max-combine a Gaussian ball at continuous `centre` into `channel` ``(X, Y, Z)``, in place;
    `sigma` per axis in voxels (a ball in mm on an anisotropic grid)."""
    ranges = []
    for axis, size in enumerate(channel.shape):
        radius = _CUTOFF_SIGMAS * sigma[axis]
        first = max(math.ceil(centre[axis] - radius), 0)
        last = min(math.floor(centre[axis] + radius), size - 1)
        if first > last:
            return
        ranges.append(torch.arange(first, last + 1, dtype=torch.float32))
    d2 = sum(  # squared distance in sigmas
        (((r - float(c)) / float(s)) ** 2).reshape([-1 if a == axis else 1 for a in range(3)])
        for axis, (r, c, s) in enumerate(zip(ranges, centre, sigma, strict=True))
    )
    ball = torch.exp(-d2 / 2.0)
    ball[d2 > _CUTOFF_SIGMAS**2] = 0.0
    window = tuple(slice(int(r[0]), int(r[-1]) + 1) for r in ranges)
    torch.maximum(channel[window], ball, out=channel[window])


class RenderGuidance:
    """Prompts on the source grid -> ``(4 * C, X, Y, Z)`` float32 guidance on the network grid.

    Args:
        labels: the model's label set, name -> value, in channel order (``Native3DConfig.labels``).
        sigma: standard deviation of a click's ball, in mm.
    """

    def __init__(self, *, labels: Mapping[str, int], sigma: float = 2.0) -> None:
        if not labels:
            raise ValueError("a label set with at least one label is needed")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.labels = dict(labels)
        self.channel = {int(value): c for c, value in enumerate(self.labels.values())}
        self.sigma = float(sigma)

    def validate(self, prompts: Prompts, source_shape: Sequence[int]) -> None:
        """Check `prompts` against the source volume and this label set.

        Raises:
            PromptError: a label not in the set, an empty box, a box or click outside the volume.
        """
        validate_prompts(prompts, source_shape, self.labels)

    def __call__(
        self,
        prompts: Prompts | None,
        *,
        source_affine: np.ndarray,
        grid_affine: np.ndarray,
        grid_shape: Sequence[int],
        source_shape: Sequence[int] | None = None,
        mask: np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Render `prompts` (``None``: no prompts, all zeros) on the grid of `grid_affine`.

        Args:
            prompts: boxes and clicks in source voxel coordinates (their ``mask`` is not read here: it
                must be brought onto the grid first, see `mask`).
            source_affine: ``(4, 4)`` voxel -> RAS of the source volume the prompts refer to.
            grid_affine, grid_shape: the network grid, ``(4, 4)`` and ``(X, Y, Z)``.
            source_shape: ``(I, J, K)``; when given, the prompts are validated first.
            mask: the current label map already on the network grid, ``(X, Y, Z)`` (or ``(1, X, Y, Z)``),
                integer values of the label set; None: no current mask.

        Returns:
            ``(4 * C, X, Y, Z)`` float32 in ``[0, 1]``, channels as in the module docstring.
        """
        grid_shape = tuple(int(s) for s in grid_shape)
        out = torch.zeros((PER_CLASS * len(self.labels), *grid_shape), dtype=torch.float32)
        if mask is not None:
            current = torch.as_tensor(mask).reshape(grid_shape).round()
            for value, c in self.channel.items():
                out[PER_CLASS * c + MASK] = (current == value).float()
        if prompts is None:
            return out
        if source_shape is not None:
            self.validate(prompts, source_shape)
        transform = np.linalg.solve(_affine(grid_affine), _affine(source_affine))
        for box in prompts.boxes:
            box3d = box.to_box3d() if isinstance(box, Box2D) else box
            window = _box_on_grid(box3d, transform, grid_shape)
            if window is not None:
                out[PER_CLASS * self._channel(box.label) + BOX][window] = 1.0
        sigma = self.sigma / grid_spacing(grid_affine)
        for click in prompts.clicks:
            centre = np.asarray(click.ijk, float) @ transform[:3, :3].T + transform[:3, 3]
            kind = POSITIVE if click.positive else NEGATIVE
            _add_ball(out[PER_CLASS * self._channel(click.label) + kind], centre, sigma)
        return out

    def _channel(self, label: int) -> int:
        try:
            return self.channel[int(label)]
        except KeyError:
            known = ", ".join(f"{n}: {v}" for n, v in self.labels.items())
            raise PromptError(f"label {label} is not in this model's label set {{{known}}}") from None


class RenderGuidanced(MapTransform):
    """Dictionary wrapper of :class:`RenderGuidance`, run after the preprocessing.

    Reads the prompts at ``keys`` (a :class:`Prompts` or ``None``), the preprocessed image at
    ``ref_key`` (a MetaTensor: its affine and shape are the network grid), the source affine at
    ``affine_key`` (the preprocessing's input) and, when present, the current label map at ``mask_key``
    already on the network grid (the preprocessing resamples it beside the image); writes the guidance
    ``(4 * C, X, Y, Z)`` at ``output_key``. The image is left untouched, so its trace still inverts
    predictions.
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        labels: Mapping[str, int],
        sigma: float = 2.0,
        ref_key: str = "image",
        affine_key: str = "affine",
        mask_key: str = "mask",
        output_key: str = "guidance",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.renderer = RenderGuidance(labels=labels, sigma=sigma)
        self.ref_key, self.affine_key, self.output_key = ref_key, affine_key, output_key
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in (self.ref_key, self.affine_key):
            if key not in d:
                raise KeyError(f"Key `{key}` of transform `{type(self).__name__}` was missing in the data.")
        reference = d[self.ref_key]
        if not isinstance(reference, MetaTensor):
            raise TypeError(f"{type(self).__name__} needs the preprocessed MetaTensor at `{self.ref_key}`")
        for key in self.key_iterator(d):
            d[self.output_key] = self.renderer(
                d[key],
                source_affine=d[self.affine_key],
                grid_affine=reference.affine,
                grid_shape=reference.shape[1:],
                mask=d.get(self.mask_key),
            )
        return d
