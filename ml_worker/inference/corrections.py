"""The click guarantee: after every answer a click is honoured, and a click changes only what it was
placed on.

The network is trained to follow clicks (:mod:`ml_worker.adaptation.train`), but a network alone cannot
promise it. Three rules, applied to the mask a model returns for one structure, make the promise:

1. Direction. A positive click only adds to the mask and a negative click only takes away: what the
   network changed the other way (a boundary it moved elsewhere while following the click) is undone.
   A click is the annotator saying "more here" or "less here", and the next click is placed on what is
   left, so nothing the annotator already accepted is lost to a correction.
2. Locality. The voxels that changed since the previous mask are split into 6-connected regions; a
   region that reaches within ``reach`` mm of the newest click stays, every other one is undone. So a
   click fixes the error it was placed on and cannot move the boundary somewhere the annotator was
   not looking (what a 3D Slicer or nnInteractive user expects: a correction where I clicked).
3. The clicked voxels. Every click given so far is on its side: a positive click's voxel is in the
   mask, a negative click's voxel is out (a later click on the same voxel wins).

All three work on the source grid, on the mask the annotator sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml_worker.inference.prompts import Click
from ml_worker.inference.simulate import label_components

__all__ = ["honour_clicks"]


def _ball(
    shape: Sequence[int], centre: Sequence[int], radius: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The window around `centre` and the bool ellipsoid of per-axis `radius` (voxels) inside it."""
    lo = [max(0, int(np.floor(c - r))) for c, r in zip(centre, radius, strict=True)]
    hi = [min(s, int(np.ceil(c + r)) + 1) for c, r, s in zip(centre, radius, shape, strict=True)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    d2 = sum(((g - c) / max(r, 1e-6)) ** 2 for g, c, r in zip(grids, centre, radius, strict=True))
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), d2 <= 1.0


def honour_clicks(
    mask: np.ndarray,
    *,
    clicks: Sequence[Click],
    previous: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    reach: float = 6.0,
) -> np.ndarray:
    """The mask a model returned, made to honour the clicks (see the module docstring).

    Args:
        mask: bool ``(I, J, K)``: the model's answer for one structure.
        clicks: every click given so far for that structure, in order; the last is the newest.
        previous: the structure's mask before the newest click (None: the answer to a box, taken whole).
        spacing: voxel size in mm of the grid, for `reach`.
        reach: how far (mm) from the newest click a changed region may start and still be kept.

    Returns:
        A new bool array of `mask`'s shape.
    """
    out = np.array(mask, dtype=bool, copy=True)
    if previous is not None and clicks:
        previous = np.asarray(previous, dtype=bool)
        changed = out & ~previous if clicks[-1].positive else previous & ~out
        if changed.any():
            regions, n = label_components(changed)
            window, ball = _ball(out.shape, clicks[-1].ijk, reach / np.asarray(spacing, float))
            near = np.unique(regions[window][ball & (regions[window] > 0)])
            kept = np.isin(regions, near) if n else np.zeros_like(changed)
            out = previous ^ (changed & kept)
    for click in clicks:
        out[tuple(click.ijk)] = click.positive
    return out
