"""Interactive training: the prompts an annotator gives, simulated on the network's own errors.

The recipe of nnInteractive, SAM-Med3D and DeepEdit. Each training sample starts from a state an
annotator meets, for one structure (or sometimes all of them):

- nothing: no prompt and an empty mask (pre-segmentation, and the start of a click-only session);
- a 3D box around the structure, each side jittered outwards;
- a 2D box on one slice through the structure (the box a user drags on one plane);
- a degraded mask: the structure's label eroded, dilated, shifted, cut by a plane or with a blob added
  (what a pre-segmentation or an earlier answer looks like), sometimes with a box.

Then the network predicts, and a click goes where the prediction is most wrong: the interior-most
voxel of the largest false-negative or false-positive 6-connected region, positive or negative
accordingly (:func:`~ml_worker.inference.simulate.next_click`), and the prediction becomes the current
mask channel; a random number of rounds, without gradient. The loss is on the prediction after the last
click (:class:`~ml_worker.adaptation.train.Trainer` does that part).

Everything here works on one sample's network grid (the prompts' voxel coordinates are grid voxels) and
draws from the generator it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ml_worker.inference.prompts import Box2D, Box3D, Click, Prompts
from ml_worker.inference.simulate import jittered_box, next_click

__all__ = ["InteractionState", "START_KINDS", "degrade_mask", "slice_box", "start_state"]

# how a prompted sample starts, and how often
START_KINDS: dict[str, float] = {"nothing": 0.2, "box3d": 0.35, "box2d": 0.15, "mask": 0.3}


@dataclass
class InteractionState:
    """The prompts of one sample so far: boxes and clicks on its grid and the current label map."""

    classes: tuple[int, ...] = ()  # the label values being prompted
    boxes: list[Box3D | Box2D] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    mask: np.ndarray | None = None  # (X, Y, Z) integer label map: the current mask, None when empty
    start: str = "unprompted"

    def prompts(self) -> Prompts | None:
        if not (self.boxes or self.clicks):
            return None
        return Prompts(boxes=tuple(self.boxes), clicks=tuple(self.clicks))

    def step(self, probabilities: np.ndarray, label: np.ndarray, label_values: Sequence[int]) -> None:
        """One simulated round: the prediction ``(C, X, Y, Z)`` becomes the current mask of the prompted
        classes, and each of them gets a click on its largest error."""
        current = np.zeros(label.shape, dtype=np.uint8)
        for value in self.classes:
            predicted = probabilities[list(label_values).index(value)] > 0.5
            current[predicted] = value
            click = next_click(predicted, label == value, label=value)
            if click is not None:
                self.clicks.append(click)
        self.mask = current


def slice_box(truth: np.ndarray, *, label: int, rng: np.random.Generator, jitter: int = 2) -> Box2D:
    """A 2D box on one slice through the structure (random axis and slice), around its cross-section,
    each side moved outwards by ``0..jitter`` voxels."""
    axis = int(rng.integers(3))
    occupied = np.nonzero(truth.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    index = int(rng.choice(occupied))
    section = np.take(truth, index, axis=axis)
    box = jittered_box(section[..., None], label=label, rng=rng, jitter=jitter)
    return Box2D(label=label, slice_index=index, lo=box.lo[:2], hi=box.hi[:2], axis=axis)


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool3d(mask[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0.5


def degrade_mask(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The structure's label with one or two typical errors of a model's mask (see the module
    docstring); bool, same shape."""
    mask = torch.from_numpy(np.asarray(truth, dtype=bool).copy())
    for kind in rng.choice(["erode", "dilate", "shift", "cut", "blob"], size=int(rng.integers(1, 3))):
        r = int(rng.integers(1, 3))
        if kind == "erode":
            mask = ~_dilate(~mask, r)
        elif kind == "dilate":
            mask = _dilate(mask, r)
        elif kind == "shift":
            mask = torch.roll(mask, shifts=int(rng.choice([-3, -2, -1, 1, 2, 3])), dims=int(rng.integers(3)))
        elif kind == "cut" and mask.any():
            points = torch.nonzero(mask).float()
            centre = points[int(rng.integers(len(points)))]
            normal = torch.from_numpy(rng.normal(size=3)).float()
            grid = torch.stack(torch.meshgrid(*(torch.arange(s) for s in mask.shape), indexing="ij"), -1)
            mask = mask & (((grid.float() - centre) @ normal) < 0)
        elif kind == "blob" and mask.any():
            edge = torch.nonzero(_dilate(mask, 2) & ~mask)
            if len(edge):
                centre = edge[int(rng.integers(len(edge)))]
                blob = torch.zeros_like(mask)
                blob[tuple(centre.tolist())] = True
                mask = mask | _dilate(blob, int(rng.integers(1, 4)))
    return mask.numpy()


def start_state(
    label: np.ndarray,
    labelled: Sequence[int],
    rng: np.random.Generator,
    *,
    jitter: int = 3,
    starts: dict[str, float] = START_KINDS,
) -> InteractionState:
    """The starting state of a prompted sample: one structure present in `label` (or, one time in
    four, every labelled one) and how it starts (see :data:`START_KINDS`).

    Returns:
        The state; with no labelled structure present, an unprompted one (``classes`` empty).
    """
    label = np.asarray(label)
    present = [int(v) for v in labelled if (label == v).any()]
    if not present:
        return InteractionState()
    classes = present if rng.random() < 0.25 else [present[int(rng.integers(len(present)))]]
    kinds, weights = list(starts), np.asarray(list(starts.values()), dtype=np.float64)
    start = str(rng.choice(kinds, p=weights / weights.sum()))
    state = InteractionState(classes=tuple(classes), start=start)
    if start == "mask":
        state.mask = np.zeros(label.shape, dtype=np.uint8)
    for value in classes:
        truth = label == value
        if start == "box3d" or (start == "mask" and rng.random() < 0.3):
            state.boxes.append(jittered_box(truth, label=value, rng=rng, jitter=jitter))
        elif start == "box2d":
            state.boxes.append(slice_box(truth, label=value, rng=rng, jitter=jitter))
        if start == "mask":
            state.mask[degrade_mask(truth, rng)] = value
    return state
