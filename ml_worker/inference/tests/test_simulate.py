from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml_worker.inference.prompts import Click
from ml_worker.inference.simulate import (
    distance_to_boundary,
    jittered_box,
    label_components,
    next_click,
    region_centre,
)


def components_by_search(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components by depth-first search, numbered by first voxel: the reference."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    n = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        n += 1
        labels[start], stack = n, [start]
        while stack:
            voxel = stack.pop()
            for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
                near = list(voxel)
                near[axis] += step
                near = tuple(near)
                if (
                    all(0 <= v < s for v, s in zip(near, mask.shape, strict=True))
                    and mask[near]
                    and not labels[near]
                ):
                    labels[near] = n
                    stack.append(near)
    return labels, n


def distance_by_search(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest voxel outside the mask (or the array), brute force."""
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded)
    out = np.zeros(mask.shape)
    for voxel in np.argwhere(mask):
        out[tuple(voxel)] = np.sqrt(((outside - (voxel + 1)) ** 2).sum(axis=1).min())
    return out


@pytest.mark.parametrize("seed", range(8))
def test_components_and_distances_match_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((9, 7, 8)) < rng.uniform(0.2, 0.7)
    labels, n = label_components(mask)
    expected, expected_n = components_by_search(mask)
    assert n == expected_n
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(distance_to_boundary(mask), distance_by_search(mask), atol=1e-5)


def test_a_winding_component_is_one():
    mask = np.zeros((9, 9, 1), dtype=bool)
    mask[::2, :, 0] = True  # rows joined alternately at the right and left ends: a snake
    mask[1::4, -1, 0] = True
    mask[3::4, 0, 0] = True
    assert label_components(mask)[1] == 1


def test_empty_masks():
    assert label_components(np.zeros((3, 3, 3), bool))[1] == 0
    assert distance_to_boundary(np.zeros((3, 3, 3), bool)).max() == 0


def test_centre_is_the_deepest_voxel():
    region = np.zeros((20, 20, 20), dtype=bool)
    region[2:17, 5:10, 5:10] = True  # a 15x5x5 bar: deepest along its axis at 3 from the sides
    assert region_centre(region) == (9, 7, 7)  # ties along the bar go to the one nearest its centroid
    assert distance_to_boundary(region)[9, 7, 7] == 3.0


def test_largest_false_negative_region_gives_a_positive_click_at_its_centre():
    truth = np.zeros((30, 30, 30), dtype=bool)
    truth[5:25, 5:25, 5:25] = True
    prediction = truth.copy()
    prediction[5:8, 5:8, 5:8] = False  # a small miss
    prediction[10:21, 10:15, 5:25] = False  # the big miss: 11 x 5 x 20
    click = next_click(prediction, truth, label=2)
    assert click == Click(label=2, ijk=(15, 12, 14), positive=True)


def test_largest_false_positive_region_gives_a_negative_click():
    truth = np.zeros((30, 30, 30), dtype=bool)
    truth[10:20, 10:20, 10:20] = True
    prediction = truth.copy()
    prediction[0:5, 0:5, 0:5] = True  # 125 voxels of leakage
    prediction[10:12, 10:12, 10:12] = False  # 8 voxels missed
    click = next_click(prediction, truth, label=1)
    assert click is not None and not click.positive
    assert click.ijk == (2, 2, 2)
    assert prediction[click.ijk] and not truth[click.ijk]


def test_a_region_touching_the_volume_edge_is_clicked_inside():
    truth = np.zeros((10, 10, 10), dtype=bool)
    prediction = np.zeros_like(truth)
    prediction[0:3, :, :] = True  # the edge of the volume counts as boundary
    click = next_click(prediction, truth, label=1)
    assert click.ijk[0] == 1


def test_no_click_when_the_prediction_is_right():
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    assert next_click(mask, mask, label=1) is None


@pytest.mark.parametrize("seed", range(20))
def test_jittered_box_holds_the_structure_and_moves_at_most_jitter(seed):
    truth = np.zeros((20, 30, 25), dtype=bool)
    truth[1:10, 8:20, 5:24] = True  # touches the volume's end on k
    box = jittered_box(truth, label=1, rng=np.random.default_rng(seed), jitter=2)
    extent_lo, extent_hi = (1, 8, 5), (9, 19, 23)
    for axis in range(3):
        assert 0 <= box.lo[axis] <= extent_lo[axis] and extent_lo[axis] - box.lo[axis] <= 2
        assert extent_hi[axis] <= box.hi[axis] < truth.shape[axis] and box.hi[axis] - extent_hi[axis] <= 2


def test_jittered_box_is_reproducible_and_refuses_an_empty_label():
    truth = np.zeros((10, 10, 10), dtype=bool)
    truth[3:6, 3:6, 3:6] = True
    boxes = {jittered_box(truth, label=1, rng=np.random.default_rng(7)) for _ in range(3)}
    assert len(boxes) == 1
    with pytest.raises(ValueError, match="label 2 has no voxels"):
        jittered_box(np.zeros_like(truth), label=2, rng=np.random.default_rng(0))
