"""Prompts for interactive segmentation, in voxel coordinates of the volume, and their validation.

Coordinates follow `ml_worker.io.volume`: a volume array is indexed ``[i, j, k]`` = ``[column, row,
slice]``. Every prompt names the label (the class value in the project's label set) it is for, so a
request can carry prompts for several structures. Boxes are inclusive: ``lo`` and ``hi`` are both
voxels inside the box, as ``np.nonzero`` minima and maxima give them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

AXIS_NAMES = ("i", "j", "k")

Voxel = tuple[int, int, int]


class PromptError(ValueError):
    """A prompt a person gave that cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class Box3D:
    """A 3D box around one structure: voxels ``lo`` to ``hi`` inclusive on every axis."""

    label: int
    lo: Voxel
    hi: Voxel


@dataclass(frozen=True)
class Box2D:
    """A box drawn on one slice: ``slice_index`` along `axis`, in-plane corners ``lo``/``hi`` inclusive.

    The in-plane coordinates are the two other voxel axes in increasing order: ``(i, j)`` for the
    default ``axis=2`` (slices along k).
    """

    label: int
    slice_index: int
    lo: tuple[int, int]
    hi: tuple[int, int]
    axis: int = 2

    def to_box3d(self) -> Box3D:
        """The same box as a `Box3D` one slice thick."""
        lo, hi = list(self.lo), list(self.hi)
        lo.insert(self.axis, self.slice_index)
        hi.insert(self.axis, self.slice_index)
        return Box3D(self.label, tuple(lo), tuple(hi))


@dataclass(frozen=True)
class Click:
    """A click on voxel ``ijk``: positive (this is the structure) or negative (this is not)."""

    label: int
    ijk: Voxel
    positive: bool = True


@dataclass(frozen=True, eq=False)
class Prompts:
    """Everything a person gave for one volume: boxes, clicks in the order given, a previous mask.

    mask: optional ``(I, J, K)`` integer label map on the volume grid (0 background), e.g. the
        pre-segmentation or the last saved version, that the prompts refine.
    """

    boxes: tuple[Box3D | Box2D, ...] = ()
    clicks: tuple[Click, ...] = ()
    mask: np.ndarray | None = field(default=None, repr=False)

    def labels(self) -> list[int]:
        """The labels these prompts are for, in first-mention order."""
        seen: dict[int, None] = {}
        for prompt in (*self.boxes, *self.clicks):
            seen.setdefault(prompt.label, None)
        return list(seen)

    def for_label(self, label: int) -> Prompts:
        """Only the boxes and clicks for `label` (the mask is kept whole)."""
        return Prompts(
            boxes=tuple(b for b in self.boxes if b.label == label),
            clicks=tuple(c for c in self.clicks if c.label == label),
            mask=self.mask,
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _label_set_text(labels: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{name}: {value}" for name, value in labels.items()) + "}"


def _check_label(label: int, labels: Mapping[str, int]) -> None:
    if label not in set(labels.values()):
        raise PromptError(f"label {label} is not in this project's label set {_label_set_text(labels)}")


def _check_box(box: Box3D, shape: Sequence[int], what: str) -> None:
    lo, hi = tuple(int(v) for v in box.lo), tuple(int(v) for v in box.hi)
    if len(lo) != 3 or len(hi) != 3:
        raise PromptError(f"{what} needs 3 coordinates per corner, got lo {box.lo} and hi {box.hi}")
    for axis in range(3):
        if lo[axis] > hi[axis]:
            raise PromptError(f"{what} is empty: lo {lo} > hi {hi} on axis {AXIS_NAMES[axis]}")
    for axis in range(3):
        if lo[axis] < 0 or hi[axis] >= shape[axis]:
            raise PromptError(
                f"{what} from {lo} to {hi} reaches outside the volume of {_shape_text(shape)} voxels "
                f"on axis {AXIS_NAMES[axis]} (valid: 0 to {shape[axis] - 1})"
            )


def validate_prompts(prompts: Prompts, shape: Sequence[int], labels: Mapping[str, int]) -> None:
    """Check prompts against a volume of `shape` (I, J, K) and the project's label set.

    Args:
        prompts: what the person gave.
        shape: the volume's ``(I, J, K)``.
        labels: the project's label set, name -> value (0, background, is never a label).

    Raises:
        PromptError: a label not in the set, an empty box or one reaching outside the volume, a
            click outside the volume, a box given on a slice axis other than 0-2, or a previous mask
            of the wrong shape or with values outside the label set.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise PromptError(f"prompts need a 3D volume, got shape {shape}")
    for box in prompts.boxes:
        _check_label(box.label, labels)
        if isinstance(box, Box2D):
            if box.axis not in (0, 1, 2):
                raise PromptError(f"2D box on axis {box.axis}: the slice axis must be 0, 1 or 2")
            if len(box.lo) != 2 or len(box.hi) != 2:
                raise PromptError(f"2D box needs 2 in-plane coordinates per corner, got {box.lo}, {box.hi}")
            _check_box(box.to_box3d(), shape, "2D box")
        else:
            _check_box(box, shape, "box")
    for click in prompts.clicks:
        _check_label(click.label, labels)
        ijk = tuple(int(v) for v in click.ijk)
        if len(ijk) != 3 or any(not 0 <= v < s for v, s in zip(ijk, shape, strict=True)):
            raise PromptError(f"click at {ijk} is outside the volume of {_shape_text(shape)} voxels")
    if prompts.mask is not None:
        mask = np.asarray(prompts.mask)
        if mask.shape != shape:
            raise PromptError(
                f"previous mask has shape {_shape_text(mask.shape)}, the volume {_shape_text(shape)}"
            )
        extra = sorted(set(np.unique(mask).tolist()) - {0, *labels.values()})
        if extra:
            raise PromptError(
                f"previous mask holds values {extra} that are not in this project's label set "
                f"{_label_set_text(labels)}"
            )


def prompts_from_json(data: dict, *, shape: tuple[int, int, int]) -> tuple[int, Box3D, tuple[Click, ...]]:
    """A request's prompts -> (label, box, clicks), checked against the volume's `shape`.

    ``{"label": 1, "box": {"lo": [i, j, k], "hi": [i, j, k]},
    "clicks": [{"ijk": [i, j, k], "positive": true}, ...]}``

    Raises:
        PromptError: a missing box, malformed coordinates, a prompt outside the volume.
    """
    try:
        label = int(data["label"])
        box = Box3D(label, tuple(int(v) for v in data["box"]["lo"]), tuple(int(v) for v in data["box"]["hi"]))
        clicks = tuple(
            Click(label, tuple(int(v) for v in c["ijk"]), bool(c.get("positive", True)))
            for c in data.get("clicks", [])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptError(
            'expected {"label": int, "box": {"lo": [i, j, k], "hi": [i, j, k]}, '
            f'"clicks": [{{"ijk": [i, j, k], "positive": bool}}]}}: {exc!r}'
        ) from None
    validate_prompts(Prompts(boxes=(box,), clicks=clicks), shape, {str(label): label})
    return label, box, clicks
