from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from ml_worker.uncertainty.scores import (
    ALL_FLIPS,
    NoDropoutError,
    aggregate,
    foreground_region,
    mc_dropout_variance,
    model_disagreement,
    tta_disagreement,
    voxel_entropy,
)
from ml_worker.uncertainty.tests.conftest import TinyNet


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0.5, 1.0), (0.0, 0.0), (1.0, 0.0), (0.25, 0.8112781), (0.75, 0.8112781), (0.9, 0.4689956)],
)
def test_binary_entropy(p, expected):
    probs = np.full((2, 3, 3, 3), p, dtype=np.float32)
    h = voxel_entropy(probs)
    assert h.shape == probs.shape and h.dtype == np.float32
    np.testing.assert_allclose(h, expected, atol=1e-6)


def test_binary_entropy_peaks_at_one_half():
    p = torch.linspace(0, 1, 101).reshape(1, 101, 1, 1)
    h = voxel_entropy(p)[0, :, 0, 0]
    assert int(np.argmax(h)) == 50 and h[50] == pytest.approx(1.0)
    assert h[0] == 0.0 and h[-1] == 0.0 and np.all(np.isfinite(h))
    np.testing.assert_allclose(h, h[::-1], atol=1e-6)


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([1 / 3, 1 / 3, 1 / 3], 1.0),
        ([1.0, 0.0, 0.0], 0.0),
        ([0.0, 0.0, 1.0], 0.0),
        ([0.5, 0.5, 0.0], np.log(2) / np.log(3)),
    ],
)
def test_exclusive_entropy(probs, expected):
    p = torch.tensor(probs).reshape(3, 1, 1, 1).expand(3, 2, 2, 2)
    h = voxel_entropy(p, exclusive=True)
    assert h.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(h, expected, atol=1e-6)


def _probs_with_uncertain_ball(size: int) -> np.ndarray:
    """One class: confident background everywhere (p=0.02), a ball of 5 voxels radius at p=0.6."""
    grid = np.indices((size, size, size)) - (size - 1) / 2
    ball = np.linalg.norm(grid, axis=0) <= 5
    return np.where(ball, 0.6, 0.02)[None].astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "topk_mean"])
def test_aggregation_ignores_background(reduction):
    # the same structure in a small and in a large field of view scores the same: background does not count
    scores = []
    for size in (24, 48):
        probs = _probs_with_uncertain_ball(size)
        region = foreground_region(probs, threshold=0.5, margin=2)
        scores.append(aggregate(voxel_entropy(probs), mask=region, reduction=reduction).overall)
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    # unmasked means are diluted by background, the larger the more
    plain = [aggregate(voxel_entropy(_probs_with_uncertain_ball(s))).overall for s in (24, 48)]
    assert plain[1] < plain[0] < scores[0]


def test_topk_mean_reduces_over_the_most_uncertain_voxels():
    values = np.zeros((1, 10, 10, 10), np.float32)
    values[0, :1, :5] = 1.0  # 50 voxels = 5 %
    assert aggregate(values, reduction="topk_mean", top_fraction=0.05).overall == pytest.approx(1.0)
    assert aggregate(values, reduction="topk_mean", top_fraction=0.10).overall == pytest.approx(0.5)
    assert aggregate(values).overall == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("mask", "expected_per_class"),
    [
        (None, (0.5, 0.25)),
        (np.array([True, False])[:, None, None].repeat(2, 1).repeat(2, 2), (1.0, 0.5)),  # (2, 2, 2) shared
        (np.zeros((2, 2, 2, 2), bool), (0.0, 0.0)),  # empty regions score 0
    ],
)
def test_aggregate_per_class(mask, expected_per_class):
    values = np.zeros((2, 2, 2, 2), np.float32)
    values[0, 0] = 1.0
    values[1, 0] = 0.5
    score = aggregate(values, mask=mask)
    assert score.per_class == pytest.approx(expected_per_class)
    assert score.overall == pytest.approx(np.mean(expected_per_class))


def test_one_channel_map_scores_each_class_region():
    values = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    mask = np.zeros((2, 2, 2, 2), bool)
    mask[0, 0], mask[1, 1] = True, True
    assert aggregate(values, mask=mask).per_class == pytest.approx((1.5, 5.5))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mask": np.ones((3, 3, 3), bool)}, ValueError),
        ({"mask": np.ones((3, 2, 2, 2), bool)}, ValueError),
        ({"reduction": "median"}, ValueError),
        ({"reduction": "topk_mean", "top_fraction": 0.0}, ValueError),
    ],
)
def test_aggregate_rejects(kwargs, error):
    with pytest.raises(error):
        aggregate(np.zeros((2, 2, 2, 2)), **kwargs)


def test_foreground_region_grows_by_the_margin():
    probs = np.zeros((1, 9, 9, 9), np.float32)
    probs[0, 4, 4, 4] = 0.9
    assert foreground_region(probs, margin=0).sum() == 1
    assert foreground_region(probs, margin=1).sum() == 27
    assert foreground_region(probs, margin=2).sum() == 125
    assert foreground_region(probs, threshold=0.95).sum() == 0


def test_tta_of_a_flip_equivariant_model_is_zero(image):
    spread = tta_disagreement(lambda x: torch.sigmoid(4 * x - 2), image, flips=ALL_FLIPS)
    assert spread.mean.shape == spread.variance.shape == (1, 16, 16, 16)
    np.testing.assert_allclose(spread.variance, 0.0, atol=1e-12)
    np.testing.assert_allclose(spread.mean, torch.sigmoid(4 * image - 2).numpy(), atol=1e-6)


def test_tta_is_deterministic_for_a_seed(image, tiny_net):
    def predict(x):
        return torch.sigmoid(tiny_net(x))

    first = tta_disagreement(predict, image, jitter=0.05, seed=3)
    again = tta_disagreement(predict, image, jitter=0.05, seed=3)
    other = tta_disagreement(predict, image, jitter=0.05, seed=4)
    assert np.array_equal(first.variance, again.variance) and np.array_equal(first.mean, again.mean)
    assert not np.array_equal(first.variance, other.variance)
    assert first.variance.max() > 0 and first.variance.max() <= 0.25
    # without jitter the seed plays no part
    assert np.array_equal(
        tta_disagreement(predict, image, seed=1).variance, tta_disagreement(predict, image, seed=2).variance
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"flips": ((),)}, "two views"), ({"flips": ((), (3,))}, "spatial axes")],
)
def test_tta_rejects(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tta_disagreement(torch.sigmoid, image, **kwargs)


def test_tta_checks_the_prediction_shape(image):
    with pytest.raises(ValueError, match="predict must map"):
        tta_disagreement(lambda x: x[:, :, :8], image)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: TinyNet(dropout=0.3),
        lambda: UNet(
            spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout=0.2
        ),
    ],
    ids=["tiny-convnet", "monai-unet"],
)
def test_mc_dropout_is_deterministic_for_a_seed(image, make_model):
    model = make_model().eval()
    rng_before = torch.get_rng_state()
    first = mc_dropout_variance(model, image, n=4, seed=11)
    again = mc_dropout_variance(model, image, n=4, seed=11)
    other = mc_dropout_variance(model, image, n=4, seed=12)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert first.variance.shape == (2, 16, 16, 16)
    assert np.array_equal(first.variance, again.variance) and np.array_equal(first.mean, again.mean)
    assert not np.array_equal(first.variance, other.variance)
    assert first.variance.max() > 0


@pytest.mark.parametrize("training", [False, True])
def test_mc_dropout_restores_module_modes(image, training):
    model = TinyNet(dropout=0.3).train(training)
    mc_dropout_variance(model, image, n=2)
    assert all(m.training is training for m in model.modules())


def test_mc_dropout_restores_modes_after_an_error(image):
    model = TinyNet(dropout=0.3).eval()

    def failing(x):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        mc_dropout_variance(model, image, n=2, predict=failing)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "model",
    [
        TinyNet(dropout=0.0),
        UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout=0.0),
    ],
    ids=["no-dropout", "dropout-p0"],
)
def test_mc_dropout_without_dropout_is_an_error(image, model):
    with pytest.raises(NoDropoutError, match="no dropout layer"):
        mc_dropout_variance(model, image)


def test_mc_dropout_needs_two_passes(image, tiny_net):
    with pytest.raises(ValueError, match="at least 2"):
        mc_dropout_variance(tiny_net, image, n=1)


def test_model_disagreement():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(model_disagreement(a, a), 0.0)  # soft, yet identical -> 0
    empty = np.zeros_like(a)
    np.testing.assert_array_equal(model_disagreement(empty, empty), 0.0)  # both empty: agreement
    np.testing.assert_allclose(model_disagreement(a, empty), 1.0)
    b = a.copy()
    b[1] = 1.0 - b[1]
    d = model_disagreement(a, b)
    assert d.shape == (3,) and d[0] == 0.0 and d[2] == 0.0 and 0.0 < d[1] < 1.0
    np.testing.assert_allclose(model_disagreement(a, b), model_disagreement(b, a))
    with pytest.raises(ValueError, match="shape"):
        model_disagreement(a, a[:2])


def test_no_warnings_on_extreme_probabilities():
    probs = np.array([0.0, 1.0, 1e-30, 1 - 1e-7], np.float32).reshape(1, 4, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = voxel_entropy(probs)
    assert np.all(np.isfinite(h)) and h[0, 0] == 0.0 and h[0, 1] == 0.0
