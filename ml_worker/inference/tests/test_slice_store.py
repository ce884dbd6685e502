"""Embeddings that arrive slice by slice: the encoding order (prompted slice first, then its slab
outward), the store shared by processes, and one embeddings task per volume."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ml_worker.inference.embeddings import EmbeddingCache
from ml_worker.inference.slice_store import (
    Focus,
    SliceStore,
    encoding_order,
    iter_pending,
    request_claim,
    request_claimed,
    request_refresh,
    request_release,
)


@pytest.mark.parametrize(
    ("n", "focus", "expected"),
    [
        (7, Focus(slice=3, lo=2, hi=5), [3, 4, 2, 5, 6, 1, 0]),  # the slab outward, then the rest
        (5, Focus(slice=0, lo=0, hi=2), [0, 1, 2, 3, 4]),
        (5, Focus(slice=4, lo=3, hi=4), [4, 3, 2, 1, 0]),
        (6, Focus(slice=2, lo=0, hi=5), [2, 3, 1, 4, 0, 5]),
        (5, None, [2, 3, 1, 4, 0]),  # no prompt yet: outward from the middle
        (4, Focus(slice=9, lo=7, hi=12), [3, 2, 1, 0]),  # clipped to the volume
        (1, Focus(slice=0, lo=0, hi=0), [0]),
    ],
)
def test_encoding_order_starts_at_the_prompted_slice(n, focus, expected):
    order = encoding_order(n, focus)
    assert order == expected and sorted(order) == list(range(n))


def _embedding(k: int) -> np.ndarray:
    return np.full((256, 64, 64), k, dtype=np.float16)


def test_slices_arrive_and_the_last_makes_the_file_complete(tmp_path):
    store = SliceStore(tmp_path, "volume/model/axis2", 3)
    assert not store.done().any() and store.readiness().ready == 0
    assert store.write(1, _embedding(1)) is False
    other = SliceStore(tmp_path, "volume/model/axis2", 3)  # another process sees what was written
    assert other.done().tolist() == [False, True, False]
    assert other.array()[1, 0, 0, 0] == 1 and other.readiness(1, 2).ready == 1
    assert other.write(0, _embedding(0)) is False
    assert store.write(2, _embedding(2)) is True
    assert store.complete and other.complete and store.done().all()
    assert not store.partial_path.exists() and not store.done_path.exists()
    stored = EmbeddingCache(directory=tmp_path).get("volume/model/axis2")  # the cache's own file
    assert stored is not None and [float(stored[k, 0, 0, 0]) for k in range(3)] == [0.0, 1.0, 2.0]
    assert store.write(0, _embedding(5)) is False  # nothing changes a complete file


def test_pending_follows_the_latest_focus(tmp_path):
    store = SliceStore(tmp_path, "v", 6)
    store.write(2, _embedding(2))
    assert store.pending() == [3, 1, 4, 0, 5]
    store.set_focus(Focus(slice=5, lo=4, hi=5))  # a box elsewhere re-steers the encoder
    assert store.pending() == [5, 4, 3, 1, 0]
    order = []
    for k in iter_pending(store):
        order.append(k)
        store.write(k, _embedding(k))
    assert order == [5, 4, 3, 1, 0] and store.complete


def test_one_claim_per_volume_until_released_or_stale(tmp_path):
    sha = "a" * 64
    assert request_claim(tmp_path, sha) is True
    assert request_claim(tmp_path, sha) is False and request_claimed(tmp_path, sha)
    assert request_claim(tmp_path, "b" * 64) is True  # another volume
    request_release(tmp_path, sha)
    assert not request_claimed(tmp_path, sha) and request_claim(tmp_path, sha) is True
    old = time.time() - 120
    os.utime(tmp_path / "requests" / sha, (old, old))  # a task lost two minutes ago
    assert request_claim(tmp_path, sha, stale_seconds=600) is False
    assert request_claim(tmp_path, sha, stale_seconds=60) is True  # taken over
    os.utime(tmp_path / "requests" / sha, (old, old))
    request_refresh(tmp_path, sha)  # a running task keeps it fresh
    assert request_claim(tmp_path, sha, stale_seconds=60) is False
