"""Agreement of two label maps: Dice and surface distances in mm, on boxes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from ml_worker.inference.agreement import agreement, class_agreement

SHAPE = (40, 40, 20)


def box(shift: tuple[int, int, int] = (0, 0, 0), value: int = 1) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    i, j, k = shift
    mask[10 + i : 20 + i, 10 + j : 20 + j, 5 + k : 10 + k] = value
    return mask


@pytest.mark.parametrize(
    ("shift", "spacing", "dice", "hd95"),
    [
        ((0, 0, 0), (1.0, 1.0, 1.0), 1.0, 0.0),
        ((2, 0, 0), (1.0, 1.0, 1.0), 0.8, 2.0),  # two voxels along the first axis
        ((2, 0, 0), (0.5, 1.0, 1.0), 0.8, 1.0),  # ... of half a millimetre each
        ((2, 0, 0), (1.0, 1.0, 3.0), 0.8, 2.0),  # the spacing of another axis does not count
        ((0, 0, 2), (1.0, 1.0, 3.0), 0.6, 6.0),  # two slices of 3 mm
    ],
)
def test_dice_and_surface_distance_in_mm(shift, spacing, dice, hd95):
    found = class_agreement(box(), box(shift), label=1, spacing=spacing)
    assert found.dice == pytest.approx(dice)
    assert found.hd95_mm == pytest.approx(hd95)
    assert 0 <= found.assd_mm <= found.hd95_mm
    assert (found.voxels_a, found.voxels_b) == (500, 500)


def test_a_missing_class_has_no_distance_and_two_empty_ones_agree():
    empty = np.zeros(SHAPE, np.uint8)
    one_sided = class_agreement(box(), empty, label=1, spacing=(1, 1, 1))
    assert (one_sided.dice, one_sided.hd95_mm, one_sided.assd_mm) == (0.0, None, None)
    neither = class_agreement(empty, empty, label=1, spacing=(1, 1, 1))
    assert (neither.dice, neither.hd95_mm, neither.assd_mm) == (1.0, 0.0, 0.0)


def test_each_class_on_its_own_and_shapes_must_match():
    a = box() + box((15, 15, 0), value=2)
    b = box((1, 0, 0)) + box((15, 15, 0), value=2)
    first, second = agreement(a, b, labels=[1, 2], spacing=(1, 1, 1))
    assert first.label == 1 and first.dice == pytest.approx(0.9) and first.hd95_mm == pytest.approx(1.0)
    assert second.label == 2 and second.dice == 1.0 and second.hd95_mm == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        class_agreement(a, a[:-1], label=1, spacing=(1, 1, 1))
