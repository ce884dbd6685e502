from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_worker.uncertainty.embedding import intensity_embedding, volume_embedding


def _volume(seed: int, shape=(20, 24, 16)) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 50.0, shape).astype(np.float32)


@pytest.mark.parametrize(
    ("embed", "make"),
    [
        (
            volume_embedding,
            lambda seed: torch.rand((8, 6, 6, 6), generator=torch.Generator().manual_seed(seed)),
        ),
        (intensity_embedding, _volume),
    ],
    ids=["features", "intensity"],
)
def test_deterministic_normalised_and_distinct(embed, make):
    first, again, other = embed(make(0)), embed(make(0)), embed(make(1))
    assert first.dtype == np.float32 and first.ndim == 1
    assert np.array_equal(first, again)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(first, other)


def test_volume_embedding_pools_mean_and_max():
    features = torch.zeros((2, 4, 4, 4))
    features[0, 0, 0, 0] = 64.0  # mean 1, max 64
    features[1] = 3.0  # mean 3, max 3
    expected = np.array([1.0, 3.0, 64.0, 3.0])
    np.testing.assert_allclose(volume_embedding(features), expected / np.linalg.norm(expected), rtol=1e-6)
    assert volume_embedding(features).shape == (4,)


def test_volume_embedding_of_zeros_is_zero():
    np.testing.assert_array_equal(volume_embedding(np.zeros((3, 2, 2, 2))), 0.0)


@pytest.mark.parametrize(
    ("kwargs", "length"),
    [({}, 32 + 64), ({"bins": 16, "thumbnail": (2, 2, 2)}, 16 + 8)],
)
def test_intensity_embedding_length(kwargs, length):
    assert intensity_embedding(_volume(0), **kwargs).shape == (length,)
    assert intensity_embedding(np.stack([_volume(0), _volume(1)]), **kwargs).shape == (2 * length,)


def test_intensity_embedding_ignores_units_but_not_content():
    volume = _volume(0)
    np.testing.assert_allclose(intensity_embedding(volume), intensity_embedding(volume * 1000 + 5), atol=1e-6)
    flipped = intensity_embedding(volume[::-1].copy())
    assert not np.allclose(intensity_embedding(volume), flipped)  # the thumbnail sees where things are


def test_intensity_embedding_of_a_constant_image_is_finite():
    out = intensity_embedding(np.full((8, 8, 8), 42.0))
    assert np.all(np.isfinite(out)) and np.linalg.norm(out) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("embed", "bad"),
    [
        (volume_embedding, np.zeros(5)),
        (intensity_embedding, np.zeros((4, 4))),
        (intensity_embedding, np.zeros((1, 2, 2, 2, 2))),
    ],
)
def test_bad_shapes(embed, bad):
    with pytest.raises(ValueError, match="shape"):
        embed(bad)
