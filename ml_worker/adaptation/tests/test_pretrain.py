from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ml_worker.adaptation.pretrain import (
    PretrainConfig,
    PretrainError,
    TransferError,
    VolumeFusion,
    VolumeFusiond,
    fusion_loss,
    load_pretrained,
    pretrain,
    pretrain_network,
    pretrain_step,
    transfer_pretrained,
)
from ml_worker.models.native3d import build_native3d, load_native3d

TINY = {"roi_size": (16, 16, 16), "init_filters": 8, "batch_size": 2, "steps_per_epoch": 1, "lr": 3e-3}


@pytest.fixture(autouse=True)
def _one_thread():
    # a tiny net on a shared 2-core machine runs fastest (and reproducibly) on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(shape=(1, 16, 16, 16), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


# ---- the transform ---------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 3, 5])
@pytest.mark.parametrize("shape", [(1, 16, 16, 16), (2, 12, 20, 8)])
def test_label_is_the_fusion_coefficient(levels, shape):
    a, b = _pair(shape)
    fusion = VolumeFusion(levels=levels, num_boxes=(20, 30))
    fusion.set_random_state(1)
    fused, label = fusion(a, b)
    assert fused.shape == a.shape and fused.dtype == np.float32
    assert label.shape == (1, *shape[1:]) and label.dtype == np.int64
    assert set(np.unique(label)) == set(range(levels))  # 20+ boxes: every level shows up
    alpha = label / (levels - 1)
    np.testing.assert_allclose(fused, alpha * a + (1 - alpha) * b, atol=1e-6)
    background = np.broadcast_to(label == 0, a.shape)
    full = np.broadcast_to(label == levels - 1, a.shape)
    np.testing.assert_array_equal(fused[background], b[background])  # level 0: all b
    np.testing.assert_allclose(fused[full], a[full], atol=1e-6)  # level K-1: all a


def test_outside_every_box_is_background_level_zero():
    fusion = VolumeFusion(levels=5, num_boxes=(1, 1), box_fraction=(0.25, 0.25))
    for seed in range(5):
        fusion.set_random_state(seed)
        _, label = fusion(*_pair())
        foreground = np.argwhere(label[0] > 0)
        assert len(foreground) in (0, 4**3)  # one 4x4x4 box (or a box drawn at level 0)
        if len(foreground):
            assert (foreground.max(axis=0) - foreground.min(axis=0) == 3).all()


def test_same_seed_same_fusion_and_containers_agree():
    a, b = _pair()
    runs = []
    for seed in (7, 7, 8):
        fusion = VolumeFusion()
        fusion.set_random_state(seed)
        runs.append(fusion(a, b))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])
    fusion = VolumeFusion().set_random_state(7)
    fused, label = fusion(MetaTensor(torch.from_numpy(a)), torch.from_numpy(b))
    assert isinstance(fused, MetaTensor) and fused.dtype == torch.float32 and label.dtype == torch.int64
    np.testing.assert_array_equal(label.numpy(), runs[0][1])
    again, same = fusion(b, a, randomize=False)  # the same map for another pair
    np.testing.assert_array_equal(same, runs[0][1])


def test_dictionary_version():
    a, b = _pair()
    fusion = VolumeFusiond(("a", "b"), label_key="levels", output_key="image", levels=4)
    fusion.set_random_state(3)
    out = fusion({"a": a, "b": b, "other": 1})
    expected = VolumeFusion(levels=4).set_random_state(3)(a, b)
    np.testing.assert_array_equal(out["image"], expected[0])
    np.testing.assert_array_equal(out["levels"], expected[1])
    assert out["a"] is a and out["other"] == 1
    with pytest.raises(KeyError, match="VolumeFusiond: key 'b'"):
        fusion({"a": a})
    with pytest.raises(ValueError, match="exactly two keys"):
        VolumeFusiond(("a", "b", "c"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"levels": 1}, "levels must be an integer >= 2"),
        ({"num_boxes": (0, 3)}, "at least 1"),
        ({"num_boxes": (5, 2)}, "min <= max"),
        ({"box_fraction": (0.0, 0.5)}, "0 < min <= max <= 1"),
        ({"box_fraction": (0.5, 1.5)}, "0 < min <= max <= 1"),
    ],
)
def test_bad_fusion_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VolumeFusion(**kwargs)


def test_volumes_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        VolumeFusion()(np.zeros((1, 8, 8, 8)), np.zeros((1, 8, 8, 16)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi_size": (16, 16, 12)}, "roi_size must be three multiples of 8"),
        ({"epochs": 0}, "at least 1"),
        ({"init_filters": 12}, "init_filters"),
        ({"levels": 1}, "levels"),
        ({"dice_weight": 0, "ce_weight": 0}, "not both 0"),
    ],
)
def test_bad_pretrain_settings(kwargs, message):
    with pytest.raises(PretrainError, match=message):
        PretrainConfig(**kwargs)


# ---- training --------------------------------------------------------------------------------------


def _smooth_volume(shape, seed) -> np.ndarray:
    """Blobs: random noise smoothed by repeated box averaging, so the fused volumes have structure."""
    x = torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))[None, None]
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    return x[0, 0].numpy() * 1000.0


@pytest.fixture
def volumes(tmp_path):
    paths = []
    for i, shape in enumerate([(20, 24, 18), (18, 18, 22), (24, 20, 20)]):
        path = tmp_path / "images" / f"case_{i}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(_smooth_volume(shape, i), np.eye(4)), str(path))
        paths.append(path)
    return paths


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    config = PretrainConfig(**TINY)
    fusion = config.fusion().set_random_state(0)
    pairs = [
        fusion(_smooth_volume((16, 16, 16), s)[None] / 1000, _smooth_volume((16, 16, 16), s + 9)[None] / 1000)
        for s in (1, 2)
    ]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))
    labels = torch.from_numpy(np.stack([p[1] for p in pairs]))
    torch.manual_seed(0)
    model = pretrain_network(config)
    assert model(images).shape == (2, config.levels, 16, 16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    loss_fn = fusion_loss(config)
    losses = [pretrain_step(model, optimizer, loss_fn, images, labels) for _ in range(6)]
    with torch.no_grad():
        final = float(loss_fn(model.eval()(images), labels))
    assert final < 0.9 * losses[0], (losses, final)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_is_seeded_resumable_and_writes_a_native3d_file(volumes, tmp_path):
    config = PretrainConfig(**TINY, epochs=2)
    events = []
    whole = pretrain(volumes, out=tmp_path / "a" / "pretrained.pt", config=config, progress=events.append)
    assert [(e.epoch, e.step) for e in events] == [(1, 1), (2, 1)] and events[-1].fraction == 1.0
    assert whole.resumed_after == 0 and len(whole.losses) == 2
    assert (tmp_path / "a" / "pretrained.ckpt" / "last.pt").is_file()

    # an interrupted run (1 epoch), resumed to 2, ends where the uninterrupted one did
    first = PretrainConfig(**TINY, epochs=1)
    out = tmp_path / "b" / "pretrained.pt"
    half = pretrain(volumes, out=out, config=first)
    assert half.losses[0] == whole.losses[0]
    events.clear()
    resumed = pretrain(volumes, out=out, config=config, progress=events.append)
    assert resumed.resumed_after == 1 and [e.epoch for e in events] == [2]
    assert resumed.losses == whole.losses
    assert _state_equal(resumed.model.state_dict(), whole.model.state_dict())

    model, net_config = load_native3d(out)
    assert net_config.num_classes == config.levels and not net_config.guidance
    assert _state_equal(model.state_dict(), whole.model.state_dict())
    record = torch.load(out, weights_only=True)["pretrain"]
    assert record["losses"] == list(whole.losses) and record["volumes"] == 3
    assert record["settings"]["levels"] == 5 and record["method"] == "volume-fusion/1"
    assert load_pretrained(out)[1] == net_config


def test_resume_refuses_a_checkpoint_of_other_settings(volumes, tmp_path):
    out = tmp_path / "pretrained.pt"
    pretrain(volumes, out=out, config=PretrainConfig(**TINY, epochs=1))
    other = PretrainConfig(**(TINY | {"lr": 1e-4}), epochs=2)
    with pytest.raises(PretrainError, match=r"other settings \(lr: 0.003 -> 0.0001\)"):
        pretrain(volumes, out=out, config=other)
    with pytest.raises(PretrainError, match="another list of volumes"):
        pretrain(volumes[:2], out=out, config=PretrainConfig(**TINY, epochs=2))
    fresh = pretrain(volumes, out=out, config=other, resume=False)
    assert fresh.resumed_after == 0 and len(fresh.losses) == 2


def test_unusable_volumes_are_refused(tmp_path, volumes):
    config = PretrainConfig(**TINY, epochs=1)
    with pytest.raises(PretrainError, match="at least one"):
        pretrain([], out=tmp_path / "x.pt", config=config)
    with pytest.raises(PretrainError, match="no image file at .*missing.nii.gz"):
        pretrain([*volumes, tmp_path / "missing.nii.gz"], out=tmp_path / "x.pt", config=config)


# ---- transfer --------------------------------------------------------------------------------------


def _pretrained(levels=5, init_filters=8) -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    net = pretrain_network(PretrainConfig(**(TINY | {"init_filters": init_filters}), levels=levels))
    for p in net.parameters():  # make every tensor distinguishable from a fresh init
        p.data.add_(torch.randn_like(p) * 0.1)
    return net.state_dict()


def _head_input(model, x):
    """The features the head sees, and the output, for input `x`."""
    seen = []
    handle = model.head.register_forward_hook(lambda m, args, out: seen.append(args[0]) and None)
    with torch.no_grad():
        out = model.eval()(x)
    handle.remove()
    return seen[0], out


def test_transfer_copies_matching_tensors_adapts_the_stem_and_skips_the_head():
    state = _pretrained()
    target = build_native3d(num_classes=2, guidance=True, init_filters=8, dropout=0.0)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("conv_final.2.")}
    report = transfer_pretrained(state, target)

    after = target.state_dict()
    assert set(report.copied) == set(after) - set(head_before) - {"convInit.conv.weight"}
    assert all(torch.equal(after[k], state[k]) for k in report.copied)
    assert report.adapted == ("convInit.conv.weight",)
    stem = after["convInit.conv.weight"]
    assert stem.shape[1] == target.convInit.conv.in_channels == 9
    assert torch.equal(stem[:, :1], state["convInit.conv.weight"])
    assert not stem[:, 1:].any()
    assert set(report.skipped) == set(head_before) and "head" in report.skipped["conv_final.2.conv.weight"]
    assert all(torch.equal(after[k], v) for k, v in head_before.items())

    # runnable with guidance, and (guidance kernels zeroed) computing the pretrained features
    image = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    guidance = torch.rand(1, target.convInit.conv.in_channels - 1, 16, 16, 16)
    features, logits = _head_input(target, torch.cat([image, guidance], dim=1))
    assert logits.shape == (1, 2, 16, 16, 16) and torch.isfinite(logits).all()
    source = pretrain_network(PretrainConfig(**TINY))
    source.load_state_dict(state)
    torch.testing.assert_close(features, _head_input(source, image)[0])


def test_transfer_skips_the_head_even_when_its_shape_matches():
    target = build_native3d(num_classes=5, guidance=False, init_filters=8)
    report = transfer_pretrained(_pretrained(levels=5), target)
    assert report.adapted == () and "convInit.conv.weight" in report.copied
    assert {"conv_final.2.conv.weight", "conv_final.2.conv.bias"} == set(report.skipped)


def test_transfer_from_the_file_pretrain_wrote(volumes, tmp_path):
    out = tmp_path / "pretrained.pt"
    result = pretrain(volumes, out=out, config=PretrainConfig(**TINY, epochs=1))
    target = build_native3d(num_classes=2, guidance=True, init_filters=8)
    report = transfer_pretrained(out, target)
    assert torch.equal(
        target.state_dict()["up_layers.0.0.conv1.conv.weight"],
        result.model.state_dict()["up_layers.0.0.conv1.conv.weight"],
    )
    assert report.unused == ()


def test_transfer_refuses_networks_that_do_not_fit():
    with pytest.raises(TransferError, match="another init_filters"):
        transfer_pretrained(_pretrained(init_filters=8), build_native3d(num_classes=2, init_filters=16))
    with pytest.raises(TransferError, match="not a native 3D net"):
        transfer_pretrained(_pretrained(), torch.nn.Sequential(torch.nn.Linear(2, 2)))


# ---- the command -----------------------------------------------------------------------------------


def test_pretrain_command_runs_and_resumes(volumes, tmp_path, capsys):
    import json

    from ml_worker.adaptation.pretrain_cli import find_images
    from ml_worker.cli import main

    (tmp_path / "exclude.txt").write_text("case_2.nii.gz\n")
    assert [p.name for p in find_images(volumes[0].parent)] == [
        "case_0.nii.gz",
        "case_1.nii.gz",
        "case_2.nii.gz",
    ]
    out = tmp_path / "cli" / "pretrained.pt"
    argv = ["pretrain", "--images", str(volumes[0].parent), "--out", str(out), "--roi", "16,16,16"]
    argv += ["--init-filters", "8", "--exclude", str(tmp_path / "exclude.txt")]
    assert main([*argv, "--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["volumes"] == 2 and first["epochs"] == 1 and out.is_file()
    assert main([*argv, "--epochs", "2"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["resumed_after"] == 1 and second["losses"][0] == first["losses"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--images", str(empty), "--out", str(out)]) == 2
    assert "no NIfTI images" in capsys.readouterr().err
