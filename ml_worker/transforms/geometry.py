"""Geometry transforms that the MONAI pipeline needs around our volume convention.

Volumes arrive as ``array[i, j, k]`` on the source grid plus an ``affine`` (voxel -> RAS mm) that
is sheared for a gantry-tilted CT (see :mod:`ml_worker.io.volume`). Two transforms bridge that
to MONAI, each an array class plus a ``d`` dictionary wrapper:

- :class:`ToMetaTensor` puts the array on a channel-first :class:`~monai.data.MetaTensor` that carries
  the affine, so ``Orientation``, ``Spacing`` and the pads record what they do and can be inverted.
- :class:`Deshear` resamples a *sheared* volume onto the nearest orthogonal grid, and is a traced
  no-op for every other volume (oblique but orthogonal ones included).

Why :class:`Deshear` exists. ``Orientation`` only permutes and flips axes (it keeps a shear exactly),
and MONAI's ``Spacing(diagonal=False)`` happens to drop the shear (``zoom_affine`` keeps the rotation of
a QR decomposition), but (a) without a target spacing there is no ``Spacing`` and the network would see
the sheared grid, i.e. anatomy slanted by the tilt angle, and (b) ``Spacing`` runs after ``Orientation``,
so its QR keeps the direction of whichever axis became R (for a sagittal stack that is the *tilted* slice
axis) rather than the acquired slice plane. :class:`Deshear` runs on the source axes instead: the new grid
keeps the in-plane column direction and the slice plane exactly, its third axis is the slice *normal*, and
its default spacing is the in-plane pixel size and the true distance between slice planes
(``step . normal``, smaller than the step between positions). Given the pipeline's target spacing it
resamples straight to it, so the ``Spacing`` that follows is a no-op and a tilted volume is interpolated
once, not twice. The resampling is MONAI's :class:`~monai.transforms.SpatialResample`, so it is traced and
:meth:`Compose.inverse` / ``Invertd`` map a prediction back onto the sheared source grid like any other
step. The new grid covers every source voxel centre (its corners are padded with ``padding_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, SpatialResample, Transform
from monai.utils import TransformBackends, ensure_tuple_rep

__all__ = [
    "SHEAR_TOL",
    "Deshear",
    "Desheard",
    "ToMetaTensor",
    "ToMetaTensord",
    "deshear_grid",
    "is_sheared",
]

# Largest |cos| between two normalised affine columns still taken as orthogonal: 1e-3 is ~0.06 degrees,
# the level below which ml_worker.io.dicom_series calls a tilt numerical noise.
SHEAR_TOL = 1e-3


def _as_affine(affine: NdarrayOrTensor) -> np.ndarray:
    out = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if out.shape != (4, 4) or not np.all(np.isfinite(out)) or abs(np.linalg.det(out[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got {out.tolist()}")
    return out


def is_sheared(affine: NdarrayOrTensor, *, tol: float = SHEAR_TOL) -> bool:
    """Whether the voxel axes of ``affine`` (4x4, voxel -> world) are not mutually orthogonal."""
    m = _as_affine(affine)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)
    return bool(np.max(np.abs(unit.T @ unit - np.eye(3))) > tol)


def deshear_grid(
    affine: NdarrayOrTensor, spatial_shape: Sequence[int], *, pixdim: Sequence[float] | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The orthogonal grid (affine ``(4, 4)``, shape ``(3,)``) that covers a (sheared) source grid.

    Axis ``a`` of the new grid is source axis ``a`` made orthogonal to the axes before it (QR on the
    source axis order): axis 0 keeps its direction, axes 0-1 keep the slice plane, axis 2 is the slice
    normal. Spacing: ``pixdim`` given in RAS order (as ``Spacing`` after ``Orientation("RAS")`` takes it,
    matched to each axis by its nearest RAS direction), else the source's own (``|column 0|``, the
    in-plane row spacing, the distance between slice planes). Orthogonal input -> the same directions.
    """
    a = _as_affine(affine)
    q, r = np.linalg.qr(a[:3, :3])
    signs = np.sign(np.diag(r))
    q, r = q * signs, r * signs[:, None]  # positive diagonal: each axis keeps its sense
    spacing = np.diag(r).copy()
    if pixdim is not None:
        target = np.asarray(pixdim, dtype=np.float64)
        if target.shape != (3,) or not np.all(target > 0):
            raise ValueError(f"pixdim must be three positive spacings, got {tuple(pixdim)}")
        ras_axis = nib.orientations.io_orientation(
            np.vstack([np.hstack([q, np.zeros((3, 1))]), [0, 0, 0, 1]])
        )
        spacing = target[ras_axis[:, 0].astype(int)]
    rzs = q @ np.diag(spacing)
    shape = np.asarray(tuple(spatial_shape), dtype=np.float64)
    corners = np.stack(np.meshgrid(*[(0.0, s - 1.0) for s in shape], indexing="ij")).reshape(3, -1)
    # source voxel corners in the new grid's voxel units (origin at world 0)
    coords = np.linalg.solve(rzs, a[:3, :3] @ corners + a[:3, 3:4])
    lo, hi = coords.min(axis=1), coords.max(axis=1)
    out_shape = tuple(int(math.ceil(v - 1e-6)) + 1 for v in hi - lo)
    out = np.eye(4)
    out[:3, :3] = rzs
    out[:3, 3] = rzs @ lo
    return out, out_shape


class ToMetaTensor(Transform):
    """An array on its source grid + its affine -> a channel-first :class:`MetaTensor`.

    ``img``: ``(I, J, K)`` (a channel is added) or ``(C, I, J, K)``; numpy or torch (uint16 included).
    ``affine``: ``(4, 4)`` voxel -> RAS mm; may be left out when ``img`` is already a MetaTensor.
    Output: ``(C, I, J, K)`` of ``dtype`` whose ``affine`` and ``original_affine`` are the given affine.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, affine: NdarrayOrTensor | None = None) -> MetaTensor:
        if affine is None:
            if not isinstance(img, MetaTensor):
                raise ValueError("an affine is needed unless the image is already a MetaTensor")
            affine = img.affine
        matrix = _as_affine(affine)
        if isinstance(img, torch.Tensor):
            data = img.as_tensor() if isinstance(img, MetaTensor) else img
            data = data.detach().to(self.dtype)
        else:
            numpy_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
            data = torch.from_numpy(np.asarray(img).astype(numpy_dtype, copy=True))
        if data.ndim == 3:
            data = data[None]
        elif data.ndim != 4:
            raise ValueError(f"expected (I, J, K) or (C, I, J, K), got shape {tuple(data.shape)}")
        meta = {
            "original_affine": matrix.copy(),
            "spatial_shape": np.asarray(data.shape[1:]),
            "original_channel_dim": 0 if np.ndim(img) == 4 else float("nan"),
        }
        return MetaTensor(data, affine=torch.as_tensor(matrix), meta=meta)


class ToMetaTensord(MapTransform):
    """Dictionary wrapper of :class:`ToMetaTensor`: ``keys`` share the affine stored at ``affine_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        *,
        affine_key: str = "affine",
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.affine_key = affine_key
        self.converter = ToMetaTensor(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        affine = d.get(self.affine_key)
        for key in self.key_iterator(d):
            if affine is None and not isinstance(d[key], MetaTensor):
                raise KeyError(
                    f"Key `{self.affine_key}` of transform `{self.__class__.__name__}` was missing in the "
                    f"data (needed for the array at `{key}`)."
                )
            d[key] = self.converter(d[key], affine)
        return d


class Deshear(InvertibleTransform):
    """Resample a sheared ``(C, I, J, K)`` MetaTensor onto the orthogonal grid of :func:`deshear_grid`.

    An orthogonal volume is returned unchanged (values, shape and affine) but the step is still traced,
    so the inverse always pops what the forward pushed. Inverse: back onto the sheared source grid
    (same shape, same affine) with the recorded mode, or ``nearest`` under ``Invertd(nearest_interp=True)``.

    Args:
        pixdim: target spacing in RAS order (``None``: the source's own spacing, see :func:`deshear_grid`).
        mode, padding_mode: as in :class:`~monai.transforms.SpatialResample`.
        tol: shear tolerance for :func:`is_sheared`.
    """

    backend = SpatialResample.backend

    def __init__(
        self,
        pixdim: Sequence[float] | None = None,
        *,
        mode: str = "bilinear",
        padding_mode: str = "border",
        tol: float = SHEAR_TOL,
    ) -> None:
        self.pixdim = None if pixdim is None else tuple(float(p) for p in pixdim)
        self.mode = mode
        self.padding_mode = padding_mode
        self.tol = tol
        self.resampler = SpatialResample(dtype=torch.float64)

    def __call__(
        self, img: MetaTensor, mode: str | None = None, padding_mode: str | None = None
    ) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            raise TypeError(f"Deshear needs a MetaTensor that carries the affine, got {type(img).__name__}")
        affine = _as_affine(img.peek_pending_affine())
        shape = tuple(int(s) for s in img.peek_pending_shape())
        if is_sheared(affine, tol=self.tol):
            dst_affine, shape = deshear_grid(affine, shape, pixdim=self.pixdim)
        else:
            dst_affine = affine
        return self.resampler(
            img,
            dst_affine=torch.as_tensor(dst_affine),
            spatial_size=shape,
            mode=mode or self.mode,
            padding_mode=padding_mode or self.padding_mode,
        )

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        return self.resampler.inverse(data)


class Desheard(MapTransform, InvertibleTransform):
    """Dictionary wrapper of :class:`Deshear`; ``mode``/``padding_mode`` may be given per key."""

    backend = Deshear.backend

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float] | None = None,
        *,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "border",
        tol: float = SHEAR_TOL,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.deshear = Deshear(pixdim, tol=tol)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            d[key] = self.deshear(d[key], mode=mode, padding_mode=padding_mode)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.deshear.inverse(d[key])
        return d
