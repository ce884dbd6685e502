"""Simulated annotators for interactive evaluation: boxes from a label, clicks on the largest error.

6-connected component labelling (SimpleITK) and an exact Euclidean distance transform (numpy/torch),
fast enough for a 256x256x128 MR.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ml_worker.inference.prompts import Box3D, Click


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected (face-neighbour) components of a boolean 2D or 3D mask, as ``scipy.ndimage.label``
    gives (SimpleITK's ConnectedComponent, on the mask's bounding box).

    Returns:
        (labels, n): int32 array of `mask`'s shape, 0 outside, components numbered 1..n in order of
        their first voxel (C order); and n.
    """
    mask = np.asarray(mask, dtype=bool)
    full = np.zeros(mask.shape, dtype=np.int32)
    if mask.size == 0 or not mask.any():
        return full, 0
    nonzero = np.nonzero(mask)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in nonzero)
    # SimpleITK scans the array's last axis fastest, so its raster order is numpy's C order
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask[box], dtype=np.uint8))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, False))  # False: face neighbours
    full[box] = labels
    return full, int(labels.max())


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (voxels) from each voxel of `mask` to the nearest voxel outside it.

    Outside the array counts as outside the mask, so a region touching the volume's edge is 1 voxel
    from its boundary there. Separable squared-distance transform on the mask's bounding box: the
    first axis by two running scans, each further axis by ``min over |s| <= r of f(x + s) + s^2``,
    where r, the largest distance so far, bounds how far the minimum can lie.

    Returns:
        float32 array of `mask`'s shape, 0 outside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any():
        return out
    nonzero = np.nonzero(mask)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in nonzero)
    crop = mask[box]
    inside = torch.from_numpy(np.pad(crop, 1))  # a ring of background around the bounding box
    # axis 0: distance along the line to the nearest background voxel, forward then backward
    n = inside.shape[0]
    d = torch.zeros(inside.shape, dtype=torch.float32)
    for x in range(1, n):
        d[x] = torch.where(inside[x], d[x - 1] + 1, 0.0)
    for x in range(n - 2, -1, -1):
        d[x] = torch.minimum(d[x], torch.where(inside[x], d[x + 1] + 1, 0.0))
    f = d**2
    for axis in range(1, f.ndim):
        n = f.shape[axis]
        r = min(n - 1, int(np.ceil(float(f.max()) ** 0.5)))
        g = f.clone()
        for s in range(1, r + 1):
            step = float(s * s)
            lower, upper = g.narrow(axis, 0, n - s), g.narrow(axis, s, n - s)
            lower.copy_(torch.minimum(lower, f.narrow(axis, s, n - s) + step))
            upper.copy_(torch.minimum(upper, f.narrow(axis, 0, n - s) + step))
        f = g
    inner = f.sqrt().numpy()[tuple(slice(1, -1) for _ in range(f.ndim))]
    out[box] = np.where(crop, inner, 0.0)
    return out


def region_centre(region: np.ndarray) -> tuple[int, ...]:
    """The voxel of `region` farthest from its boundary; ties go to the one nearest its centroid."""
    distance = distance_to_boundary(region)
    best = np.argwhere(distance == distance.max())
    if len(best) > 1:
        centroid = np.argwhere(region).mean(axis=0)
        best = best[np.argmin(((best - centroid) ** 2).sum(axis=1))][None]  # first minimum
    return tuple(int(v) for v in best[0])


def next_click(prediction: np.ndarray, truth: np.ndarray, *, label: int) -> Click | None:
    """The corrective click a careful annotator gives: at the centre of the largest error region.

    Error regions are the 6-connected components of the false negatives (truth, not predicted) and,
    separately, of the false positives; the largest by voxel count wins (a false-negative region on
    a tie). Its centre is the voxel farthest from the region's boundary (`region_centre`). A false
    negative gives a positive click, a false positive a negative one.

    Args:
        prediction, truth: bool arrays of one shape (the volume's (I, J, K)).
        label: the label the click is for.

    Returns:
        The click, or None when prediction equals truth.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    best: tuple[int, bool, np.ndarray] | None = None
    for positive, errors in ((True, truth & ~prediction), (False, prediction & ~truth)):
        components, n = label_components(errors)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        largest = int(sizes.argmax())
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), positive, components == largest + 1)
    if best is None:
        return None
    _, positive, region = best
    return Click(label=label, ijk=region_centre(region), positive=positive)


def jittered_box(truth: np.ndarray, *, label: int, rng: np.random.Generator, jitter: int = 2) -> Box3D:
    """A 3D box around a structure, as an annotator draws it: the label's extent, each of the six
    sides moved by an integer drawn uniformly from ``-jitter..jitter`` voxels, but never inside the
    object (a box that cuts the structure would make the box-prompted model miss what lies
    outside it, which is not what a careful annotator does) nor outside the volume.

    So a side stays on the object's edge with probability (jitter + 1) / (2 * jitter + 1) and
    otherwise moves out by 1..jitter voxels.

    Raises:
        ValueError: `truth` is empty.
    """
    truth = np.asarray(truth, dtype=bool)
    nonzero = np.nonzero(truth)
    if nonzero[0].size == 0:
        raise ValueError(f"label {label} has no voxels: no box to draw")
    moves = rng.integers(-jitter, jitter + 1, size=(2, 3))
    lo = tuple(max(0, int(c.min()) - max(0, int(m))) for c, m in zip(nonzero, moves[0], strict=True))
    hi = tuple(
        min(s - 1, int(c.max()) + max(0, int(m)))
        for c, m, s in zip(nonzero, moves[1], truth.shape, strict=True)
    )
    return Box3D(label=label, lo=lo, hi=hi)
