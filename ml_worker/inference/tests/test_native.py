"""Tests of the native 3D task: guidance geometry, prompt errors, and a small net trained here.

The network is trained in this file (``trained`` fixture, ~80 steps on synthetic 32^3 volumes holding
a bright sphere, label 1, and a less bright cube, label 2), so the Dice floors test something the
net learned, not an accident of initialisation.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from ml_worker.inference.guidance import BOX, PER_CLASS, POSITIVE, RenderGuidance, source_to_grid
from ml_worker.inference.native import (
    Native3DSession,
    Native3DTask,
    Prediction,
    labels_from_probabilities,
    presegment,
)
from ml_worker.inference.prompts import Box2D, Box3D, Click, PromptError, Prompts
from ml_worker.io.volume import Volume
from ml_worker.models.native3d import Native3DConfig, save_native3d
from ml_worker.transforms import preprocessing, to_source_grid
from ml_worker.transforms.tests.synthetic import affine, dice, rotation, tilted

ROI = (32, 32, 32)
# dropout 0: 80 steps are too few to learn through dropout noise (the band "cube" then fails for some
# seeds); dropout itself is tested in ml_worker/models/tests/test_native3d.py
CONFIG = Native3DConfig(
    num_classes=2,
    class_names=("sphere", "cube"),
    init_filters=8,
    dropout=0.0,
    roi_size=ROI,
    spacing=(1.0, 1.0, 1.0),
)
LR = 6e-3
# Measured over training seeds 0, 1, 3, 4 and 4 held-out volumes: Dice 0.79-0.92 (sphere) and 0.60-0.90
# (cube), 0.73-0.88 on the large volume; the floor leaves room for other CPUs' rounding.
DICE_FLOOR = 0.5


@pytest.fixture(autouse=True, scope="module")
def float32():
    """These tests check geometry, guidance and the inferers to 1e-5, so they run in float32; bf16 is
    checked against float32 by its own test below."""
    from ml_worker.models import checkpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ML_WORKER_AMP", "off")
        checkpoints.cpu_bf16_supported.cache_clear()
        yield
    checkpoints.cpu_bf16_supported.cache_clear()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tests on one intra-op thread: on a 2-core machine that other processes also load,
    two OpenMP threads spin-wait on each other and 3D convolutions run up to 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scene(
    rng: np.random.Generator, shape: tuple[int, int, int] = ROI
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """A noisy ``(I, J, K)`` image with a sphere (label 1, intensity 100) and a cube (label 2, 50).

    Returns the image, the label map and the centre voxels of the sphere and of the cube.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    radius, half = rng.uniform(4.0, 6.5), rng.uniform(3.5, 5.5)
    while True:  # two centres far enough apart that the objects never touch
        centres = [rng.uniform(7.5, np.asarray(shape) - 8.5) for _ in range(2)]
        if np.linalg.norm(centres[0] - centres[1]) > radius + half * np.sqrt(3) + 2:
            break
    sphere, cube = centres
    label = np.zeros(shape, np.uint8)
    label[np.linalg.norm(grid - sphere[:, None, None, None], axis=0) <= radius] = 1
    label[np.all(np.abs(grid - cube[:, None, None, None]) <= half, axis=0)] = 2
    image = np.choose(label, [0.0, 100.0, 50.0]) + rng.normal(0.0, 10.0, shape)
    return (
        image.astype(np.float32),
        label,
        tuple(int(round(v)) for v in sphere),
        tuple(int(round(v)) for v in cube),
    )


def _training_pool(
    count: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Network inputs ``(7, 32, 32, 32)``, targets ``(2, 32, 32, 32)`` (prompted half of the time) and
    the two object centres ``(2, 3)`` (the identity grid: source voxels are network voxels)."""
    transform = preprocessing(
        modality="MR", target_spacing=CONFIG.spacing, roi_size=ROI, k_divisible=8, label_key="label"
    )
    renderer = RenderGuidance(labels=CONFIG.labels, sigma=CONFIG.click_sigma)
    pool = []
    for _ in range(count):
        image, label, sphere, cube = scene(rng)
        data = transform({"image": image, "label": label, "affine": np.eye(4)})
        clicks = [Click(value, centre) for value, centre in ((1, sphere), (2, cube)) if rng.random() < 0.5]
        guidance = renderer(
            Prompts(clicks=tuple(clicks)),
            source_affine=np.eye(4),
            grid_affine=data["image"].affine,
            grid_shape=data["image"].shape[1:],
        )
        target = data["label"].as_tensor()[0]
        inputs = torch.cat([data["image"].as_tensor(), guidance])
        pool.append((inputs, torch.stack([target == 1, target == 2]), np.array([sphere, cube])))
    return pool


def train(steps: int = 110, *, crop: int = 24, batch: int = 2, seed: int = 0) -> torch.nn.Module:
    """Fit the net on random ``crop``^3 patches of 16 synthetic volumes (BCE + Dice, Adam, linear decay).

    A test helper only: training belongs to ml_worker.adaptation.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = _training_pool(16, rng)
    net = CONFIG.build().train()
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / steps)
    loss_fn = DiceCELoss(sigmoid=True)
    for _ in range(steps):
        inputs, targets = [], []
        for index in rng.choice(len(pool), batch, replace=False):
            x, y, centres = pool[index]
            # a random crop that holds both object centres, so every step sees both classes
            first = np.maximum(0, centres.max(axis=0) - crop + 1)
            last = np.minimum(np.asarray(x.shape[1:]) - crop, centres.min(axis=0))
            corner = rng.integers(first, np.maximum(first, last) + 1)
            window = (slice(None), *(slice(c, c + crop) for c in corner))
            inputs.append(x[window])
            targets.append(y[window].float())
        optimiser.zero_grad()
        loss_fn(net(torch.stack(inputs)), torch.stack(targets)).backward()
        optimiser.step()
        schedule.step()
    return net.eval()


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    return train()


@pytest.fixture(scope="module")
def task(trained: torch.nn.Module) -> Native3DTask:
    return Native3DTask(network=trained, config=CONFIG, device="cpu")


@pytest.fixture
def untrained_task() -> Native3DTask:
    return Native3DTask(network=CONFIG.build(), config=CONFIG, device="cpu")


def _dices(prediction: Prediction, label: np.ndarray) -> list[float]:
    return [dice(prediction.labels == value, label == value) for value in (1, 2)]


# --- guidance -----------------------------------------------------------------------------------


GRIDS = {
    "identity": (np.eye(4), (24, 20, 16)),
    "flipped": (
        affine((1.0, 1.0, 1.0), directions=np.diag([-1.0, 1.0, -1.0]), origin=(40, -3, 7)),
        (24, 20, 16),
    ),
    "permuted-anisotropic": (affine((0.7, 0.7, 2.5), directions=np.eye(3)[:, [1, 2, 0]]), (30, 26, 9)),
    "oblique": (affine((1.0, 1.2, 1.5), directions=rotation(20, -10, 30)), (22, 20, 14)),
    "sheared": (tilted(affine((0.9, 0.9, 1.5)), tilt_deg=15.0), (24, 22, 12)),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_guidance_comes_back_where_the_prompt_was(untrained_task: Native3DTask, grid: str):
    """Drawn on the network grid, inverted onto the source grid: the click peaks at the clicked voxel
    and the box covers the source box."""
    source_affine, shape = GRIDS[grid]
    click = tuple(s // 2 + d for s, d in zip(shape, (1, -2, 1), strict=True))
    box = Box3D(1, (3, 4, 2), (shape[0] - 6, shape[1] - 5, shape[2] - 4))
    prompts = Prompts(boxes=(box,), clicks=(Click(2, click),))
    transform = untrained_task.pre_transforms(modality="MR")
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    data = transform({"image": image, "affine": source_affine, "prompts": prompts})
    guidance = data["guidance"]
    assert guidance.shape == (2 * PER_CLASS, *data["image"].shape[1:])

    back = to_source_grid(
        guidance[[PER_CLASS + POSITIVE, BOX]],
        transform=transform,
        data=data,
        source_shape=shape,
        source_affine=source_affine,
        kind="probabilities",
    )
    peak = np.unravel_index(np.argmax(back[0]), shape)
    assert np.abs(np.subtract(peak, click)).max() <= 1
    truth = np.zeros(shape, bool)
    truth[tuple(slice(lo, hi + 1) for lo, hi in zip(box.lo, box.hi, strict=True))] = True
    assert dice(back[1] > 0.5, truth) > 0.85


def test_source_to_grid_follows_the_affines():
    source = affine((2.0, 1.0, 3.0), origin=(10.0, 0.0, -5.0))
    grid = affine((1.0, 1.0, 1.0), directions=np.diag([-1.0, 1.0, 1.0]), origin=(30.0, 0.0, -5.0))
    mapped = source_to_grid(np.array([[0, 0, 0], [1, 2, 3]]), source_affine=source, grid_affine=grid)
    np.testing.assert_allclose(mapped, [[20.0, 0.0, 0.0], [18.0, 2.0, 9.0]])


def test_thin_box_survives_resampling_to_thicker_voxels():
    """A box one 0.5 mm slice thick still marks the 1 mm grid voxel it lies in."""
    renderer = RenderGuidance(labels={"a": 1})
    source = affine((1.0, 1.0, 0.5))
    out = renderer(
        Prompts(boxes=(Box2D(1, slice_index=9, lo=(2, 3), hi=(5, 6)),)),
        source_affine=source,
        grid_affine=np.eye(4),
        grid_shape=(8, 8, 8),
    )
    assert out[BOX].sum() == 4 * 4 * 1
    assert out[BOX, 2:6, 3:7, round(9 * 0.5)].all()


def test_no_prompts_no_guidance():
    renderer = RenderGuidance(labels={"a": 1, "b": 2})
    for prompts in (None, Prompts()):
        out = renderer(prompts, source_affine=np.eye(4), grid_affine=np.eye(4), grid_shape=(8, 8, 8))
        assert out.shape == (8, 8, 8, 8) and not out.any()


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (Prompts(clicks=(Click(1, (40, 5, 5)),)), r"click at \(40, 5, 5\) is outside the volume of 32x32x32"),
        (Prompts(boxes=(Box3D(1, (5, 9, 5), (9, 5, 9)),)), "box is empty"),
        (Prompts(boxes=(Box3D(2, (5, 5, 5), (9, 9, 32)),)), "reaches outside the volume"),
        (Prompts(clicks=(Click(7, (5, 5, 5)),)), "label 7 is not in this project's label set"),
    ],
)
def test_bad_prompts_are_refused(untrained_task: Native3DTask, prompts: Prompts, message: str):
    image = np.zeros(ROI, np.float32)
    with pytest.raises(PromptError, match=message):
        untrained_task(image=image, affine=np.eye(4), modality="MR", prompts=prompts)


def test_model_without_guidance_refuses_prompts():
    config = Native3DConfig(num_classes=1, class_names=("a",), guidance=False, init_filters=8, roi_size=ROI)
    task = Native3DTask(network=config.build(), config=config, device="cpu")
    with pytest.raises(PromptError, match="takes no prompts"):
        task(
            image=np.zeros(ROI),
            affine=np.eye(4),
            modality="MR",
            prompts=Prompts(clicks=(Click(1, (1, 1, 1)),)),
        )


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.2, 0.3], 0),  # nothing above 0.5: background
        ([0.9, 0.3], 3),
        ([0.6, 0.8], 5),  # overlap: the more probable class
        ([0.7, 0.7], 3),  # exact tie: the earlier channel
        ([0.5, 0.5], 0),  # the threshold itself is not above it
    ],
)
def test_labels_from_probabilities(probabilities, expected):
    probs = np.asarray(probabilities, np.float32).reshape(2, 1, 1, 1)
    labels = labels_from_probabilities(probs, (3, 5))
    assert labels.dtype == np.uint8 and labels.item() == expected


# --- the trained network --------------------------------------------------------------------------


@pytest.mark.parametrize("with_clicks", [False, True])
def test_presegment_on_the_source_grid(task: Native3DTask, with_clicks: bool):
    image, label, sphere, cube = scene(np.random.default_rng(123))
    # a flipped, shifted grid: a wrong inverse would misplace the off-centre objects
    source_affine = affine((1.0, 1.0, 1.0), directions=np.diag([-1.0, 1.0, -1.0]), origin=(12.0, -4.0, 30.0))
    if with_clicks:
        prompts = Prompts(clicks=(Click(1, sphere), Click(2, cube)))
        prediction = task(image=image, affine=source_affine, modality="MR", prompts=prompts)
    else:
        prediction = presegment(task, Volume(array=image, affine=source_affine), modality="MR")
    assert prediction.probabilities.shape == (2, *image.shape)
    assert prediction.probabilities.dtype == np.float32
    assert 0.0 <= prediction.probabilities.min() and prediction.probabilities.max() <= 1.0
    assert prediction.labels.shape == image.shape and prediction.labels.dtype == np.uint8
    np.testing.assert_array_equal(prediction.affine, source_affine)
    assert prediction.label_set == {"sphere": 1, "cube": 2}
    assert prediction.device == "cpu" and not prediction.sliding_window
    assert prediction.latency_s >= sum(prediction.latencies.values()) * 0.99
    assert min(_dices(prediction, label)) > DICE_FLOOR


def test_sliding_window_equals_one_forward_on_a_volume_that_fits(trained: torch.nn.Module):
    image, _, _, _ = scene(np.random.default_rng(5))
    runs = {
        mode: Native3DTask(network=trained, config=CONFIG, device="cpu", mode=mode)(
            image=image, affine=np.eye(4), modality="MR"
        )
        for mode in ("sliding", "whole")
    }
    assert runs["sliding"].sliding_window and not runs["whole"].sliding_window
    np.testing.assert_allclose(runs["sliding"].probabilities, runs["whole"].probabilities, atol=1e-5)


def test_large_volume_runs_through_sliding_window(task: Native3DTask):
    """96x80x40 with a 32^3 ROI: six scenes side by side (so intensities normalise as in training)."""
    rng = np.random.default_rng(11)
    tiles = [[scene(rng, (32, 40, 40))[:2] for _ in range(2)] for _ in range(3)]
    image, label = (
        np.concatenate([np.concatenate([t[n] for t in row], axis=1) for row in tiles]) for n in (0, 1)
    )
    assert image.shape == (96, 80, 40)
    prediction = task(image=image, affine=affine((1.0, 1.0, 1.0)), modality="MR")
    assert prediction.sliding_window
    assert prediction.probabilities.shape == (2, *image.shape)
    assert min(_dices(prediction, label)) > DICE_FLOOR


def test_from_checkpoint_gives_the_same_prediction(task: Native3DTask, tmp_path: Path):
    path = save_native3d(task.network, CONFIG, tmp_path / "native3d.pt")
    loaded = Native3DTask.from_checkpoint(path, device="cpu")
    assert loaded.info()["labels"] == {"sphere": 1, "cube": 2}
    image, _, _, _ = scene(np.random.default_rng(7))
    a = task(image=image, affine=np.eye(4), modality="MR")
    b = loaded(image=image, affine=np.eye(4), modality="MR")
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_presegment_hippocampus_lands_on_its_grid(shared_data: Path):
    """A real MR volume through an untrained net of the real layout (16 filters, 2 classes)."""
    nii = nib.load(shared_data / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz")
    config = Native3DConfig(
        num_classes=2, class_names=("anterior", "posterior"), roi_size=(48, 64, 48), spacing=(1.0, 1.0, 1.0)
    )
    task = Native3DTask(network=config.build(), config=config, device="cpu")
    volume = Volume(array=np.asarray(nii.dataobj), affine=nii.affine)
    prediction = presegment(task, volume, modality="MR")
    assert prediction.probabilities.shape == (2, *volume.shape)
    assert 0.0 <= prediction.probabilities.min() and prediction.probabilities.max() <= 1.0
    np.testing.assert_array_equal(prediction.affine, nii.affine)


# --- interactive session ------------------------------------------------------------------------


def test_session_box_then_click_keeps_every_prompt(task: Native3DTask):
    image, label, sphere, cube = scene(np.random.default_rng(11))
    session = Native3DSession(task, image=image, affine=np.eye(4), modality="MR", label=1)
    where = np.argwhere(label == 1)
    box = Box3D(1, tuple(where.min(0)), tuple(where.max(0)))
    clicks = (Click(1, sphere, positive=True), Click(1, cube, positive=False))
    after_box = session.start(box)
    assert after_box.dtype == bool and after_box.shape == image.shape
    session.click(clicks[0])
    after_clicks = session.click(clicks[1])
    assert session.clicks == list(clicks)  # the session forgets nothing
    assert after_clicks[sphere] and not after_clicks[cube]  # every click on its side
    assert [i.kind for i in session.history] == ["box", "click", "click"]
    session.start(box)
    assert session.clicks == []  # a new box starts over


def test_session_edits_the_current_mask_and_looks_only_near_the_interaction(task: Native3DTask):
    """The network gets the structure's current mask; on a volume much larger than the box it runs on a
    window around the box and clicks, and nothing outside that window changes."""
    image, label, sphere, _ = scene(np.random.default_rng(12))
    big = np.zeros((96, 32, 32), image.dtype)
    big[:32] = image
    initial = np.zeros(big.shape, bool)
    initial[90:94, 10:14, 10:14] = True  # a mask far from the box: outside the window, it stays
    session = Native3DSession(task, image=big, affine=np.eye(4), modality="MR", label=1, mask=initial)
    where = np.argwhere(label == 1)
    box = Box3D(1, tuple(where.min(0)), tuple(where.max(0)))
    mask = session.start(box)
    window = session._window()
    assert window[0].stop < 90  # 16 mm of context, not the whole 96 voxels
    assert np.array_equal(mask[window[0].stop :], initial[window[0].stop :])  # untouched outside it


def test_bf16_inference_agrees_with_float32(monkeypatch, trained: torch.nn.Module):
    from ml_worker.models import checkpoints

    image, _, _, _ = scene(np.random.default_rng(5))
    labels = {}
    for setting in ("off", "auto"):
        monkeypatch.setenv("ML_WORKER_AMP", setting)
        checkpoints.cpu_bf16_supported.cache_clear()
        labels[setting] = Native3DTask(network=trained, config=CONFIG, device="cpu")(
            image=image, affine=np.eye(4), modality="MR"
        ).labels
    monkeypatch.setenv("ML_WORKER_AMP", "off")
    checkpoints.cpu_bf16_supported.cache_clear()
    for value in (1, 2):
        assert dice(labels["auto"] == value, labels["off"] == value) >= 0.99


def test_session_refuses_a_label_outside_the_set_and_a_model_without_prompts(task: Native3DTask):
    image = np.zeros(ROI, np.float32)
    with pytest.raises(PromptError, match="label 7 is not in the model's label set"):
        Native3DSession(task, image=image, affine=np.eye(4), modality="MR", label=7)
    plain = Native3DConfig(num_classes=1, class_names=("a",), guidance=False, init_filters=8, roi_size=ROI)
    no_prompts = Native3DTask(network=plain.build(), config=plain, device="cpu")
    with pytest.raises(PromptError, match="takes no prompts"):
        Native3DSession(no_prompts, image=image, affine=np.eye(4), modality="MR", label=1)
