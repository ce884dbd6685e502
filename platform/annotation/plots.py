"""The reviewer's picture of two readings: per class, the slice where the readers disagree most, the
image in grey with each reader's outline. matplotlib's object API on the Agg canvas (no pyplot, safe
in a threaded web process); imported only when the picture is drawn."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

FIRST, SECOND = "#2450a6", "#e4572e"  # reading 1 blue, reading 2 orange (as on the compare page)


def _worst_slice(a: np.ndarray, b: np.ndarray) -> int:
    """The slice (last axis) with the most voxels in one outline and not the other; else the fullest."""
    differ = (a ^ b).sum(axis=(0, 1))
    return int(np.argmax(differ)) if differ.any() else int(np.argmax((a | b).sum(axis=(0, 1))))


def readings_png(
    image: np.ndarray, first: np.ndarray, second: np.ndarray, *, labels: Sequence[tuple[int, str]]
) -> bytes:
    """One panel per class (value, name): image, reading 1's outline in blue, reading 2's in orange."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = max(len(labels), 1)
    fig = Figure(figsize=(3.2 * n, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    for ax, (value, name) in zip(axes, labels, strict=False):
        a, b = first == value, second == value
        k = _worst_slice(a, b)
        ax.imshow(image[:, :, k].T, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        for mask, colour in ((a, FIRST), (b, SECOND)):
            if mask[:, :, k].any():
                ax.contour(mask[:, :, k].T.astype(float), levels=[0.5], colors=colour, linewidths=1.4)
        ax.set_title(f"{name}, slice {k + 1}", fontsize=10)
        ax.set_axis_off()
    fig.legend(
        handles=[
            Line2D([], [], color=FIRST, label="reading 1"),
            Line2D([], [], color=SECOND, label="reading 2"),
        ],
        loc="outside lower center",
        ncols=2,
        frameon=False,
        fontsize=9,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
