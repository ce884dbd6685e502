"""The warm interactive segmenter: incremental clicks equal a replay, encoding on demand (the prompted
slice first, then the slab outward from it, the mask growing as slices arrive), request parsing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ml_worker.inference.interactive import InteractiveSegmenter, embeddings_key
from ml_worker.inference.prompts import Box3D, Click, PromptError, prompts_from_json
from ml_worker.inference.slice_store import Focus, SliceStore, encoding_order
from ml_worker.inference.tests.conftest import AXIS, CASE, EncodedCrop

SHA = "0" * 64
NO_FILE = Path("/nonexistent.nii")  # volumes whose embeddings are complete are never read


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> InteractiveSegmenter:
    return InteractiveSegmenter(embeddings_dir=tmp_path_factory.mktemp("emb"), axis=AXIS, device="cpu")


@pytest.fixture(scope="module")
def crop_sha(segmenter: InteractiveSegmenter, encoded_crop: EncodedCrop) -> str:
    segmenter.cache.put(segmenter.key(SHA), np.asarray(encoded_crop.embeddings.embeddings))
    return SHA


def _prompts(labels: np.ndarray) -> tuple[Box3D, tuple[Click, ...]]:
    where = np.argwhere(labels == 1)
    box = Box3D(1, tuple(where.min(0)), tuple(where.max(0)))
    inside = tuple(int(v) for v in where[len(where) // 2])
    outside = (0, int(where[0][1]), 0)
    return box, (Click(1, inside, True), Click(1, outside, False))


def test_added_clicks_are_decoded_alone_and_match_a_replay(
    segmenter: InteractiveSegmenter, crop_sha: str, encoded_crop: EncodedCrop
):
    shape = encoded_crop.image.shape
    box, clicks = _prompts(encoded_crop.labels)
    first = segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=box, clicks=clicks[:1]
    )
    assert not first.incremental and first.mask.shape == shape and first.mask.any()
    warm = segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=box, clicks=clicks
    )
    assert warm.incremental and warm.slices_decoded <= 2 * segmenter.propagation.click_reach + 1
    segmenter._sessions.clear()  # a worker that never saw this interaction replays it
    cold = segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=box, clicks=clicks
    )
    assert not cold.incremental and cold.slices_decoded > warm.slices_decoded
    np.testing.assert_array_equal(warm.mask, cold.mask)


def test_another_box_or_fewer_clicks_start_over(
    segmenter: InteractiveSegmenter, crop_sha: str, encoded_crop: EncodedCrop
):
    shape = encoded_crop.image.shape
    box, clicks = _prompts(encoded_crop.labels)
    segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=box, clicks=clicks
    )
    undone = segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=box, clicks=clicks[:1]
    )
    assert not undone.incremental  # an undo is a replay, never a stale mask
    grown = Box3D(1, box.lo, tuple(min(h + 1, s - 1) for h, s in zip(box.hi, shape, strict=True)))
    assert not segmenter.segment(
        volume_path=NO_FILE, volume_sha256=crop_sha, shape=shape, label=1, box=grown, clicks=()
    ).incremental


def test_a_first_box_encodes_its_slice_first_and_the_mask_grows_as_the_slab_arrives(
    tmp_path, encoded_crop: EncodedCrop, monkeypatch
):
    segmenter = InteractiveSegmenter(embeddings_dir=tmp_path / "emb", axis=AXIS, device="cpu")
    path = encoded_crop.folder / "images" / f"{CASE}.nii"
    sha, shape = "3" * 64, encoded_crop.image.shape
    box, _ = _prompts(encoded_crop.labels)
    lo, hi = box.lo[AXIS], box.hi[AXIS]
    middle = (lo + hi) // 2
    written: list[int] = []
    write = SliceStore.write
    monkeypatch.setattr(SliceStore, "write", lambda self, k, e: written.append(k) or write(self, k, e))

    first = segmenter.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    assert written == [middle] and first.slices_encoded == 1
    assert first.pending and (first.ready.ready, first.ready.total) == (1, hi - lo + 1)
    on_slices = np.flatnonzero(first.mask.any(axis=tuple(a for a in range(3) if a != AXIS)))
    assert on_slices.tolist() == [middle]  # answered at once, on the prompted slice only
    store = segmenter.store(sha, shape)
    assert store.focus() == Focus(middle, lo, hi)

    assert segmenter.embed(path, sha) is True  # the embeddings task: outward from the prompted slice
    assert written == encoding_order(shape[AXIS], Focus(middle, lo, hi))
    assert store.complete and segmenter.has_embeddings(sha) and segmenter.embed(path, sha) is False

    grown = segmenter.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    assert grown.incremental and not grown.pending and grown.ready.ready == grown.ready.total
    segmenter._sessions.clear()
    whole = segmenter.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    np.testing.assert_array_equal(grown.mask, whole.mask)  # grown slice by slice = all at once


def test_a_click_on_a_slice_not_encoded_yet_is_encoded_first(tmp_path, encoded_crop: EncodedCrop):
    segmenter = InteractiveSegmenter(embeddings_dir=tmp_path / "emb", axis=AXIS, device="cpu")
    path = encoded_crop.folder / "images" / f"{CASE}.nii"
    sha, shape = "4" * 64, encoded_crop.image.shape
    box, _ = _prompts(encoded_crop.labels)
    where = np.argwhere(encoded_crop.labels == 1)
    at = next(tuple(int(v) for v in p) for p in where if p[AXIS] == box.lo[AXIS])
    answer = segmenter.segment(
        volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=(Click(1, at, True),)
    )
    store = segmenter.store(sha, shape)
    assert np.flatnonzero(store.done()).tolist() == sorted({box.lo[AXIS], (box.lo[AXIS] + box.hi[AXIS]) // 2})
    assert store.focus().slice == box.lo[AXIS] and answer.slices_encoded == len(np.flatnonzero(store.done()))


def test_a_box_drawn_on_another_view_is_answered_on_its_slice(
    tmp_path, encoded_crop: EncodedCrop, monkeypatch
):
    """A rectangle drawn on a slice of a view the segmenter does not slice along (a box one voxel thin
    there) is answered on that slice with that view's embeddings: only that slice is encoded, the mask
    lies on it and is what a segmenter slicing along that view answers; a click off the slice has the
    slices up to it encoded at once (no embeddings task fills that view)."""
    path = encoded_crop.folder / "images" / f"{CASE}.nii"
    sha, shape = "5" * 64, encoded_crop.image.shape
    view = 0 if AXIS != 0 else 2
    truth = encoded_crop.labels == 1
    s = int(np.argmax(truth.sum(axis=tuple(a for a in range(3) if a != view))))
    on = np.argwhere(truth)
    on = on[on[:, view] == s]
    box = Box3D(1, tuple(int(v) for v in on.min(0)), tuple(int(v) for v in on.max(0)))
    written: list[tuple[str, int]] = []
    write = SliceStore.write
    monkeypatch.setattr(
        SliceStore, "write", lambda self, k, e: written.append((self.key, k)) or write(self, k, e)
    )

    segmenter = InteractiveSegmenter(embeddings_dir=tmp_path / "emb", axis=AXIS, device="cpu")
    assert segmenter.axis_for(box) == view
    answer = segmenter.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    key = embeddings_key(sha, view)
    assert written == [(key, s)] and answer.slices_encoded == 1
    assert np.flatnonzero(answer.mask.any(axis=tuple(a for a in range(3) if a != view))).tolist() == [s]
    assert not answer.pending and answer.ready.ready == answer.ready.total == 1
    along = InteractiveSegmenter(embeddings_dir=tmp_path / "along", axis=view, device="cpu")
    same = along.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    np.testing.assert_array_equal(answer.mask, same.mask)

    step = 2 if s + 2 < shape[view] else -2
    beyond = next(tuple(int(v) for v in p) for p in np.argwhere(truth) if p[view] == s + step)
    written.clear()
    clicked = segmenter.segment(
        volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=(Click(1, beyond, True),)
    )
    assert sorted(written) == sorted((key, s + d) for d in (step // 2, step))
    assert clicked.mask[beyond] and not clicked.pending
    # a box with depth along the segmenter's own axis, or thin along it, stays on its slices
    assert segmenter.axis_for(Box3D(1, (0, 0, 0), (3, 3, 3))) == AXIS
    flat = [3, 3, 3]
    flat[AXIS] = 0
    assert segmenter.axis_for(Box3D(1, (0, 0, 0), tuple(flat))) == AXIS


def test_embed_computes_once(segmenter: InteractiveSegmenter, tmp_path):
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 3), dtype=np.float32), np.eye(4)), path)
    volume_sha = "2" * 64
    assert not segmenter.has_embeddings(volume_sha)
    assert segmenter.embed(path, volume_sha) is True
    assert segmenter.has_embeddings(volume_sha) and segmenter.embed(path, volume_sha) is False
    assert segmenter.cache.get(segmenter.key(volume_sha)).shape[0] == (12, 10, 3)[AXIS]
    assert not segmenter.store(volume_sha, (12, 10, 3)).partial_path.exists()


def test_request_prompts_are_parsed_and_checked():
    label, box, clicks = prompts_from_json(
        {
            "label": 2,
            "box": {"lo": [1, 2, 3], "hi": [4, 5, 6]},
            "clicks": [{"ijk": [2, 3, 4], "positive": False}],
        },
        shape=(10, 10, 10),
    )
    assert (label, box, clicks) == (2, Box3D(2, (1, 2, 3), (4, 5, 6)), (Click(2, (2, 3, 4), False),))
    with pytest.raises(PromptError, match="expected"):
        prompts_from_json({"label": 1, "clicks": []}, shape=(10, 10, 10))
    with pytest.raises(PromptError, match="outside the volume"):
        prompts_from_json({"label": 1, "box": {"lo": [0, 0, 0], "hi": [3, 3, 3]},
                           "clicks": [{"ijk": [10, 0, 0]}]}, shape=(10, 10, 10))  # fmt: skip


def test_boxes_around_another_models_structures_encode_only_their_slab(
    tmp_path, encoded_crop: EncodedCrop, monkeypatch
):
    segmenter = InteractiveSegmenter(embeddings_dir=tmp_path / "emb", axis=AXIS, device="cpu")
    path = encoded_crop.folder / "images" / f"{CASE}.nii"
    sha, shape = "5" * 64, encoded_crop.image.shape
    labels = np.zeros_like(encoded_crop.labels)  # "another model's" map: the truth on slices 3..6
    labels[:, 3:7] = encoded_crop.labels[:, 3:7]
    written: list[int] = []
    write = SliceStore.write
    monkeypatch.setattr(SliceStore, "write", lambda self, k, e: written.append(k) or write(self, k, e))

    assert not segmenter.boxed(volume_path=path, volume_sha256=sha, labels=np.zeros_like(labels)).any()
    assert written == []  # nothing found: nothing to encode
    out = segmenter.boxed(volume_path=path, volume_sha256=sha, labels=labels)
    assert sorted(written) == [3, 4, 5, 6]  # the slab of the boxes, not the volume's 10 slices
    assert out.shape == shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, *np.unique(labels).tolist()} and (out == 1).any()
    where = np.argwhere(labels == 1)
    box = Box3D(1, tuple(where.min(0).tolist()), tuple(where.max(0).tolist()))
    alone = segmenter.segment(volume_path=path, volume_sha256=sha, shape=shape, label=1, box=box, clicks=())
    np.testing.assert_array_equal(out == 1, alone.mask)  # label 1 first: exactly its box's answer
    with pytest.raises(PromptError, match="label map of shape"):
        segmenter.boxed(volume_path=path, volume_sha256=sha, labels=labels[:, :5])
