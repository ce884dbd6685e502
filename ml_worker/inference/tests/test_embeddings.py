from __future__ import annotations

import numpy as np
import pytest

from ml_worker.inference.embeddings import (
    EmbeddingCache,
    VolumeEmbeddings,
    normalise_mr,
    set_volume_slice,
    slice_transform,
    volume_slice,
)
from ml_worker.models.litemedsam import preprocess_slice


def fake(value: float, n: int = 1000) -> np.ndarray:
    """A small stand-in for an embedding array: n float16 values = 2n bytes."""
    return np.full(n, value, dtype=np.float16)


def test_cache_evicts_the_least_recently_used_by_bytes():
    cache = EmbeddingCache(max_bytes=5000)  # room for two 2000-byte entries
    cache.put("a", fake(1))
    cache.put("b", fake(2))
    assert cache.get("a") is not None  # "a" is now more recent than "b"
    cache.put("c", fake(3))
    assert cache.keys() == ["a", "c"]
    assert cache.get("b") is None
    assert cache.nbytes == 4000


def test_an_entry_larger_than_the_cache_is_returned_but_not_kept():
    cache = EmbeddingCache(max_bytes=1000)
    stored = cache.put("big", fake(1))
    assert stored.shape == (1000,)
    assert len(cache) == 0 and cache.nbytes == 0


def test_replacing_an_entry_counts_its_bytes_once():
    cache = EmbeddingCache(max_bytes=10_000)
    cache.put("a", fake(1))
    cache.put("a", fake(2, n=500))
    assert cache.nbytes == 1000
    assert cache.get("a")[0] == 2


def test_keys_are_isolated(tmp_path):
    cache = EmbeddingCache(max_bytes=10_000, directory=tmp_path)
    cache.put("volume-1/litemedsam/axis2", fake(1))
    cache.put("volume-1/litemedsam/axis1", fake(2))
    cache.put("volume-2/litemedsam/axis2", fake(3))
    assert cache.get("volume-1/litemedsam/axis2")[0] == 1
    assert cache.get("volume-1/litemedsam/axis1")[0] == 2
    assert cache.get("volume-2/litemedsam/axis2")[0] == 3
    assert cache.get("volume-3/litemedsam/axis2") is None
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_disk_round_trip_is_memory_mapped(tmp_path):
    array = np.arange(4 * 3 * 2, dtype=np.float16).reshape(4, 3, 2)
    EmbeddingCache(max_bytes=0, directory=tmp_path).put("k", array)  # nothing kept in memory
    restarted = EmbeddingCache(max_bytes=1 << 20, directory=tmp_path)  # a new worker process
    assert "k" in restarted
    loaded = restarted.get("k")
    assert isinstance(loaded, np.memmap)
    assert not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == np.float16
    assert list(tmp_path.glob("*.part")) == []  # no temporary file left behind


def test_get_or_compute_computes_once(tmp_path):
    calls = []
    cache = EmbeddingCache(max_bytes=1 << 20, directory=tmp_path)
    for _ in range(3):
        cache.get_or_compute("k", lambda: calls.append(1) or fake(5))
    assert len(calls) == 1
    cache.evict("k")
    assert cache.get_or_compute("k", lambda: calls.append(1) or fake(6))[0] == 5  # from disk
    assert len(calls) == 1


def test_evicted_entries_stay_on_disk(tmp_path):
    cache = EmbeddingCache(max_bytes=2500, directory=tmp_path)
    cache.put("a", fake(1))
    cache.put("b", fake(2))
    assert cache.keys() == ["b"]
    assert cache.get("a")[0] == 1  # reloaded from disk, now evicting "b" from memory
    assert cache.keys() == ["a"]


def test_cache_refuses_a_negative_bound():
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(max_bytes=-1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_round_trip_through_the_volume(axis):
    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    out = np.zeros_like(volume)
    for index in range(volume.shape[axis]):
        image = volume_slice(volume, axis, index)
        rows, cols = [volume.shape[d] for d in range(3) if d != axis][::-1]
        assert image.shape == (rows, cols)  # [row, col]: col is the lower in-plane axis
        set_volume_slice(out, axis, index, image)
    np.testing.assert_array_equal(out, volume)


def test_slice_along_k_has_x_as_i_and_y_as_j():
    volume = np.zeros((3, 4, 5))
    volume[2, 1, 3] = 1  # i=2, j=1, k=3
    image = volume_slice(volume, 2, 3)
    assert image[1, 2] == 1  # row y = j, column x = i


def test_slice_transform_matches_the_preprocessing():
    shape = (35, 51, 36)
    for axis in range(3):
        _, expected = preprocess_slice(volume_slice(np.ones(shape, dtype=np.float32), axis, 0))
        assert slice_transform(shape, axis) == expected


def test_normalise_mr_clips_outliers_per_volume():
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, size=(20, 20, 20)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # one hot voxel must not set the contrast
    out = normalise_mr(volume)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6
    np.testing.assert_array_equal(normalise_mr(np.full((3, 3, 3), 7.0)), 0.0)


def test_volume_embeddings_check_their_shape():
    with pytest.raises(ValueError, match="do not fit a volume"):
        VolumeEmbeddings(np.zeros((4, 256, 64, 64), np.float16), (5, 6, 7), axis=2)
