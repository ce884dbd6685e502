from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ml_worker.uncertainty.pool import PoolItem


def test_pool_item_is_immutable():
    scores = {"entropy": 0.3}
    embedding = np.array([0.6, 0.8])
    item = PoolItem("v1", scores, embedding)
    scores["entropy"] = 0.9
    embedding[0] = 0.0
    assert item.scores["entropy"] == 0.3 and item.embedding[0] == pytest.approx(0.6)
    assert item.embedding.dtype == np.float32
    with pytest.raises(TypeError):
        item.scores["entropy"] = 1.0
    with pytest.raises(ValueError):
        item.embedding[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.volume_id = "v2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"volume_id": ""}, "volume_id"),
        ({"volume_id": "v", "scores": {"entropy": float("nan")}}, "finite"),
        ({"volume_id": "v", "embedding": np.zeros((2, 2))}, "embedding"),
    ],
)
def test_pool_item_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PoolItem(**kwargs)


def test_pool_item_defaults():
    item = PoolItem("v1")
    assert dict(item.scores) == {} and item.embedding is None
