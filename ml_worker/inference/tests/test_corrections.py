"""The click guarantee: clicked voxels end on the clicked side; a click changes only what it touches."""

from __future__ import annotations

import numpy as np

from ml_worker.inference.corrections import honour_clicks
from ml_worker.inference.prompts import Click


def _cube(shape=(30, 30, 30), lo=(5, 5, 5), hi=(15, 15, 15)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def test_clicked_voxels_end_on_their_side_whatever_the_model_said():
    answer = _cube()
    clicks = [Click(1, (20, 20, 20), True), Click(1, (10, 10, 10), False)]
    out = honour_clicks(answer, clicks=clicks)
    assert out[20, 20, 20] and not out[10, 10, 10]
    assert (out ^ answer).sum() == 2  # nothing else touched
    assert answer[10, 10, 10]  # the model's answer is not modified in place


def test_a_later_click_on_the_same_voxel_wins():
    clicks = [Click(1, (3, 3, 3), True), Click(1, (3, 3, 3), False)]
    assert not honour_clicks(_cube(), clicks=clicks)[3, 3, 3]


def test_changes_far_from_the_newest_click_are_undone_and_the_one_it_touches_is_kept():
    previous = _cube()
    answer = previous.copy()
    answer[15:18, 5:15, 5:15] = True  # grows where the click was placed (the error it fixes)
    answer[25:28, 25:28, 25:28] = True  # a blob far away: not what the annotator asked for
    answer[5, 5, 5] = False  # a corner eaten far from the click
    click = Click(1, (16, 10, 10), True)
    out = honour_clicks(answer, clicks=[click], previous=previous, spacing=(1.0, 1.0, 1.0), reach=3.0)
    assert out[15:18, 5:15, 5:15].all()
    assert not out[25:28, 25:28, 25:28].any()
    assert out[5, 5, 5]
    assert np.array_equal(out[:15], previous[:15] | out[:15]) and out[16, 10, 10]


def test_reach_is_in_millimetres():
    previous = np.zeros((20, 20, 20), bool)
    answer = previous.copy()
    answer[10, 10, 14] = True  # 4 voxels from the click along the third axis
    click = Click(1, (10, 10, 10), True)
    near = honour_clicks(answer, clicks=[click], previous=previous, spacing=(1.0, 1.0, 1.0), reach=3.0)
    assert not near[10, 10, 14]
    thick = honour_clicks(answer, clicks=[click], previous=previous, spacing=(1.0, 1.0, 1.0), reach=3.0)
    assert thick[10, 10, 10]
    far_slices = honour_clicks(answer, clicks=[click], previous=previous, spacing=(1.0, 1.0, 0.5), reach=3.0)
    assert far_slices[10, 10, 14]  # 2 mm away on a grid of 0.5 mm slices


def test_a_positive_click_only_adds_and_a_negative_click_only_removes():
    previous = _cube()
    answer = previous.copy()
    answer[15:17, 5:15, 5:15] = True  # grows where the positive click is
    answer[13:15, 5:15, 5:15] = False  # and gives up the slab beside it: the boundary moved, not grown
    grown = honour_clicks(answer, clicks=[Click(1, (15, 10, 10), True)], previous=previous, reach=5.0)
    assert grown[15:17, 5:15, 5:15].all()
    assert np.array_equal(grown[:15], previous[:15])

    answer = previous.copy()
    answer[12:15, 5:15, 5:15] = False  # shrinks where the negative click is
    answer[15:17, 5:15, 5:15] = True  # and spills over next to it
    shrunk = honour_clicks(answer, clicks=[Click(1, (13, 10, 10), False)], previous=previous, reach=5.0)
    assert not shrunk[12:15, 5:15, 5:15].any()
    assert not shrunk[15:].any()
