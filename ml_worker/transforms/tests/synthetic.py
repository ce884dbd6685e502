"""Synthetic volumes on oblique, anisotropic and sheared grids, for the geometry tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rotation(x_deg: float = 0.0, y_deg: float = 0.0, z_deg: float = 0.0) -> np.ndarray:
    """``(3, 3)`` rotation: about x, then y, then z (degrees)."""
    out = np.eye(3)
    for axis, deg in ((0, x_deg), (1, y_deg), (2, z_deg)):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def affine(
    spacing: Sequence[float],
    *,
    directions: np.ndarray | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """``(4, 4)`` voxel -> RAS affine with unit ``directions`` (columns) scaled by ``spacing``."""
    out = np.eye(4)
    out[:3, :3] = (np.eye(3) if directions is None else directions) @ np.diag(np.asarray(spacing, float))
    out[:3, 3] = origin
    return out


def tilted(
    affine_: np.ndarray, *, tilt_deg: float, in_plane_axis: int = 1, slice_axis: int = 2
) -> np.ndarray:
    """Shear ``affine_`` like a gantry tilt: each slice step also moves along ``in_plane_axis``.

    The slice step keeps its length along the slice normal and gains ``tan(tilt) * |step|`` along the
    in-plane axis, as for a CT acquired with a tilted gantry.
    """
    out = affine_.copy()
    step = np.linalg.norm(out[:3, slice_axis])
    unit = out[:3, in_plane_axis] / np.linalg.norm(out[:3, in_plane_axis])
    out[:3, slice_axis] += np.tan(np.radians(tilt_deg)) * step * unit
    return out


def ellipsoid_label(
    shape: Sequence[int], affine_: np.ndarray, radii_mm: Sequence[float], *, core: float | None = 0.5
) -> np.ndarray:
    """``(I, J, K)`` uint8: 1 inside an axis-aligned (in world space) ellipsoid at the grid centre, 2 in
    its inner ``core`` fraction (``None``: one class only)."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = index @ affine_[:3, :3].T + affine_[:3, 3]
    centre = affine_[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine_[:3, 3]
    distance = np.linalg.norm((world - centre) / np.asarray(radii_mm, float), axis=1).reshape(tuple(shape))
    label = (distance <= 1.0).astype(np.uint8)
    if core is not None:
        label[distance <= core] = 2
    return label


def image_for(label: np.ndarray, *, seed: int = 0, scale: float = 100.0) -> np.ndarray:
    """A noisy float32 image whose intensity follows ``label``."""
    noise = np.random.default_rng(seed).normal(0.0, 5.0, label.shape)
    return (label * scale + noise).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)
