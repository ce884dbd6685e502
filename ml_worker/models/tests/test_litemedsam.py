from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ml_worker.models.litemedsam import LiteMedSAM, SliceTransform, postprocess_mask, preprocess_slice

CASE = "hippocampus_001"
# Whole-hippocampus Dice with the ground-truth box on the case's largest slice: measured 0.866
# (CPU, torch 2.13); the floor leaves room for numerical differences across machines.
DICE_FLOOR = 0.81


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def largest_slice(labels: np.ndarray) -> tuple[int, int]:
    """(axis, index) of the slice with the most foreground over all three axes."""
    best = (0, 0, -1)
    for axis in range(3):
        areas = (labels > 0).sum(axis=tuple(a for a in range(3) if a != axis))
        index = int(areas.argmax())
        if areas[index] > best[2]:
            best = (axis, index, int(areas[index]))
    return best[0], best[1]


def bbox(mask: np.ndarray) -> np.ndarray:
    """Inclusive (x0, y0, x1, y1) of a 2D mask, x = column."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()])


@pytest.fixture(scope="module")
def hippocampus_slice(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The largest-foreground slice of one case: image normalised per volume, and its labels."""
    folder = shared_data / "hippocampus"
    image = nib.load(folder / "imagesTr" / f"{CASE}.nii.gz").get_fdata(dtype=np.float32)
    labels = np.asarray(nib.load(folder / "labelsTr" / f"{CASE}.nii.gz").dataobj).astype(np.int64)
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    axis, index = largest_slice(labels)
    return np.take(image, index, axis=axis), np.take(labels, index, axis=axis)


@pytest.fixture(scope="module")
def encoded(litemedsam: LiteMedSAM, hippocampus_slice) -> tuple[torch.Tensor, SliceTransform]:
    """The slice's embedding (the only encoder run of the suite) and its transform."""
    image, _ = hippocampus_slice
    x, transform = preprocess_slice(image)
    with torch.inference_mode():
        return litemedsam.encode(x[None]), transform


def test_encode_gives_one_embedding_per_image(encoded):
    embedding, _ = encoded
    assert embedding.shape == (1, 256, 64, 64)
    assert embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()


def test_ground_truth_box_segments_the_hippocampus(litemedsam, hippocampus_slice, encoded):
    _, labels = hippocampus_slice
    embedding, transform = encoded
    truth = labels > 0
    box = transform.boxes_to_model(bbox(truth))[None]
    with torch.inference_mode():
        logits, iou = litemedsam.decode(embedding, boxes=box)
    mask = postprocess_mask(logits, transform)
    assert mask.shape == truth.shape and mask.dtype == bool
    assert dice(mask, truth) > DICE_FLOOR
    assert 0.0 < iou.item() < 1.5


@pytest.mark.parametrize(
    "prompts, batch",
    [
        ({"boxes": torch.tensor([[60.0, 70.0, 180.0, 200.0]])}, 1),
        ({"points": (torch.tensor([[[120.0, 130.0], [10.0, 10.0]]]), torch.tensor([[1, 0]]))}, 1),
        (
            {
                "boxes": torch.tensor([[60.0, 70.0, 180.0, 200.0]]),
                "points": (torch.tensor([[[120.0, 130.0]]]), torch.tensor([[1]])),
            },
            1,
        ),
        ({"boxes": torch.tensor([[60.0, 70.0, 180.0, 200.0]]), "masks": torch.zeros(1, 1, 256, 256)}, 1),
        ({"boxes": torch.tensor([[60.0, 70.0, 180.0, 200.0], [0.0, 0.0, 255.0, 255.0]])}, 2),
    ],
    ids=["box", "points", "box+point", "box+mask", "two-boxes-one-embedding"],
)
def test_decode_shapes(litemedsam, encoded, prompts, batch):
    embedding, _ = encoded
    with torch.inference_mode():
        logits, iou = litemedsam.decode(embedding, **prompts)
    assert logits.shape == (batch, 1, 256, 256)
    assert iou.shape == (batch, 1)
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()


def test_one_embedding_serves_several_prompts_like_repeated_ones(litemedsam, encoded):
    embedding, _ = encoded
    boxes = torch.tensor([[60.0, 70.0, 180.0, 200.0], [20.0, 30.0, 120.0, 100.0]])
    with torch.inference_mode():
        shared, shared_iou = litemedsam.decode(embedding, boxes=boxes)
        repeated, repeated_iou = litemedsam.decode(embedding.expand(2, -1, -1, -1), boxes=boxes)
        first, _ = litemedsam.decode(embedding, boxes=boxes[:1])
    torch.testing.assert_close(shared, repeated)
    torch.testing.assert_close(shared_iou, repeated_iou)
    torch.testing.assert_close(shared[:1], first, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "embedding_batch, prompts, message",
    [
        (1, {"boxes": torch.zeros(4)}, "boxes of shape"),
        (1, {"points": (torch.zeros(1, 2, 2), torch.zeros(1, 3))}, "point coordinates"),
        (3, {"boxes": torch.zeros(2, 4)}, "3 embeddings for 2 prompts"),
    ],
)
def test_decode_rejects_inconsistent_prompts(litemedsam, embedding_batch, prompts, message):
    with pytest.raises(ValueError, match=message):
        litemedsam.decode(torch.zeros(embedding_batch, 256, 64, 64), **prompts)


def test_encode_rejects_unprepared_images(litemedsam):
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        litemedsam.encode(torch.zeros(1, 1, 256, 256))


@pytest.mark.parametrize(
    "shape, resized",
    [
        ((35, 51), (176, 256)),
        ((51, 35), (256, 176)),
        ((256, 256), (256, 256)),
        ((512, 300), (256, 150)),
        ((1, 10), (26, 256)),
    ],
)
def test_preprocess_resizes_longest_side_normalises_and_pads(shape, resized):
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, size=shape)
    x, transform = preprocess_slice(image)
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert transform == SliceTransform(original_size=shape, resized_size=resized)
    h, w = resized
    content = x[:, :h, :w]
    assert content.min() == 0.0 and content.max() == 1.0
    assert (x[:, h:, :] == 0).all() and (x[:, :, w:] == 0).all()
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])


@pytest.mark.parametrize(
    "image",
    [np.full((20, 30), 7.0), np.arange(600, dtype=np.uint16).reshape(20, 30), np.eye(30, dtype=np.int8)],
    ids=["constant", "uint16", "int8"],
)
def test_preprocess_accepts_any_real_slice(image):
    x, _ = preprocess_slice(image)
    assert torch.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4, 4)), np.zeros((0, 5)), np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=complex)],
    ids=["3d", "empty", "bool", "complex"],
)
def test_preprocess_rejects_non_slices(image):
    with pytest.raises(ValueError):
        preprocess_slice(image)


@pytest.mark.parametrize("shape", [(35, 51), (51, 35), (300, 200)])
def test_mask_round_trip_through_the_model_frame(shape):
    """A mask drawn as the model would see it comes back on the slice grid where it started."""
    truth = np.zeros(shape, dtype=bool)
    h, w = shape
    truth[h // 4 : h // 2, w // 3 : w - 3] = True
    x, transform = preprocess_slice(truth.astype(np.float32))
    logits = (x[:1] - 0.5) * 20.0
    mask = postprocess_mask(logits, transform)
    assert mask.shape == shape
    assert dice(mask, truth) > 0.97
    probabilities = postprocess_mask(logits[None], transform, threshold=None)
    assert probabilities.dtype == np.float32 and 0.0 <= probabilities.min() <= probabilities.max() <= 1.0
    np.testing.assert_array_equal(probabilities > 0.5, mask)


def test_postprocess_takes_one_mask_at_a_time():
    with pytest.raises(ValueError, match="one mask"):
        postprocess_mask(torch.zeros(2, 1, 256, 256), SliceTransform((10, 10), (256, 256)))


@pytest.mark.parametrize(
    "original_size, box, model_box",
    [
        ((64, 64), [0, 0, 63, 63], [0.0, 0.0, 255.0, 255.0]),
        ((32, 64), [0, 0, 63, 31], [0.0, 0.0, 255.0, 127.0]),
        ((32, 64), [10, 5, 10, 5], [40.0, 20.0, 43.0, 23.0]),
        ((512, 256), [100, 200, 150, 300], [50.0, 100.0, 74.5, 149.5]),
    ],
)
def test_boxes_to_model_cover_their_pixels(original_size, box, model_box):
    transform = SliceTransform(original_size, (0, 0))
    torch.testing.assert_close(transform.boxes_to_model(np.array(box)), torch.tensor(model_box))


@pytest.mark.parametrize(
    "original_size, point, model_point",
    [
        ((64, 64), [0, 0], [1.5, 1.5]),
        ((32, 64), [63, 31], [253.5, 125.5]),
        ((256, 256), [17, 42], [17.0, 42.0]),
    ],
)
def test_points_to_model_keep_pixel_centres(original_size, point, model_point):
    transform = SliceTransform(original_size, (0, 0))
    torch.testing.assert_close(transform.points_to_model(np.array(point)), torch.tensor(model_point))
