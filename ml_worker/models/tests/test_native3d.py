"""Tests of the native 3D network: shapes, dropout, configuration, and safe, checked weight files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet

from ml_worker.models.checkpoints import CheckpointError
from ml_worker.models.native3d import (
    Native3DConfig,
    build_native3d,
    channel_of,
    describe_channels,
    load_native3d,
    save_native3d,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tests on one intra-op thread: on a 2-core machine that other processes also load,
    two OpenMP threads spin-wait on each other and 3D convolutions run up to 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(**overrides) -> Native3DConfig:
    kwargs = {
        "num_classes": 2,
        "class_names": ("anterior", "posterior"),
        "init_filters": 8,
        "roi_size": (32, 32, 32),
        "spacing": (1.0, 1.0, 1.0),
    }
    return Native3DConfig(**(kwargs | overrides))


class Payload:
    """Pickles as a call to print: loading it with plain pickle would run that call."""

    def __reduce__(self):
        return (print, ("payload ran",))


@pytest.mark.parametrize(
    ("kwargs", "in_channels", "out_channels"),
    [
        ({"num_classes": 1}, 5, 1),
        ({"num_classes": 2}, 9, 2),
        ({"num_classes": 3, "guidance": False}, 1, 3),
        ({"num_classes": 2, "init_filters": 16, "dropout": 0.0}, 9, 2),
    ],
)
def test_build_shapes(kwargs, in_channels, out_channels):
    net = build_native3d(**({"init_filters": 8} | kwargs)).eval()
    assert net.in_channels == in_channels
    with torch.no_grad():
        out = net(torch.rand(2, in_channels, 16, 24, 8))
    assert out.shape == (2, out_channels, 16, 24, 8)


def test_state_dict_is_that_of_monai_segresnet():
    ours = build_native3d(num_classes=2, init_filters=8).state_dict()
    monai = SegResNet(spatial_dims=3, in_channels=9, out_channels=2, init_filters=8, dropout_prob=0.1)
    theirs = monai.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_head_starts_at_the_prior():
    net = build_native3d(num_classes=3, init_filters=8, head_prior=0.05)
    assert torch.allclose(torch.sigmoid(net.head.bias), torch.full((3,), 0.05))


@pytest.mark.parametrize(("dropout", "varies"), [(0.1, True), (0.0, False)])
def test_dropout_gives_mc_samples_only_in_train_mode(dropout, varies):
    torch.manual_seed(0)
    net = build_native3d(num_classes=2, init_filters=8, dropout=dropout)
    x = torch.rand(1, 9, 16, 16, 16)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        assert (not torch.allclose(net(x), net(x))) == varies


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "init_filters": 12}, "multiple of 8"),
        ({"num_classes": 2, "dropout": 1.0}, "dropout"),
        ({"num_classes": 2, "head_prior": 0.0}, "head_prior"),
    ],
)
def test_build_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_native3d(**kwargs)


def test_config_round_trip_is_plain_json():
    config = _config(label_values=(3, 7), guidance=False, spacing=None)
    data = json.loads(json.dumps(config.to_dict()))
    assert Native3DConfig.from_dict(data) == config
    assert config.labels == {"anterior": 3, "posterior": 7}
    assert channel_of(config, 7) == 1
    assert describe_channels(config) == ["image"]
    assert describe_channels(_config())[1:4] == ["anterior:positive", "anterior:negative", "anterior:box"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_names": ("a",)}, "1 class_names for 2 classes"),
        ({"class_names": ("a", "a")}, "distinct"),
        ({"label_values": (1, 1)}, "label_values must be distinct"),
        ({"label_values": (0, 1)}, "1..255"),
        ({"roi_size": (32, 30, 32)}, "multiples of 8"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"click_sigma": 0.0}, "click_sigma"),
    ],
)
def test_config_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "other/2"}, "format"),
        ({"colour": "red"}, "unknown config fields"),
    ],
)
def test_config_from_dict_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        Native3DConfig.from_dict(_config().to_dict() | data)


def test_save_then_load(tmp_path: Path):
    config = _config()
    net = config.build()
    path = save_native3d(net, config, tmp_path / "sub" / "model.pt")
    loaded, loaded_config = load_native3d(path)
    assert loaded_config == config
    assert not loaded.training
    x = torch.rand(1, config.in_channels, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    obj = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert set(obj) == {"state_dict", "config"}


def test_wrong_num_classes_names_the_mismatched_shapes(tmp_path: Path):
    three = _config(num_classes=3, class_names=("a", "b", "c"))
    path = save_native3d(three.build(), three, tmp_path / "three.pt")
    with pytest.raises(CheckpointError) as raised:
        load_native3d(path, config=_config())
    message = str(raised.value)
    assert "shape mismatches" in message
    assert "conv_final.2.conv.weight: expected (2, 8, 1, 1, 1) vs got (3, 8, 1, 1, 1)" in message
    assert "convInit.conv.weight: expected (8, 9, 3, 3, 3) vs got (8, 13, 3, 3, 3)" in message


def test_plain_monai_state_dict_needs_a_config(tmp_path: Path):
    config = _config(guidance=False, num_classes=1, class_names=("liver",))
    monai = SegResNet(spatial_dims=3, in_channels=1, out_channels=1, init_filters=8, dropout_prob=0.1)
    path = tmp_path / "monai.pt"
    torch.save(monai.state_dict(), path)
    with pytest.raises(CheckpointError, match="no native3d config"):
        load_native3d(path)
    loaded, _ = load_native3d(path, config=config)
    assert torch.equal(loaded.head.weight, monai.conv_final[2].conv.weight)


def test_truncated_file_is_refused(tmp_path: Path):
    config = _config()
    path = save_native3d(config.build(), config, tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_native3d(path)


def test_pickled_object_is_refused_without_running_it(tmp_path: Path, capsys):
    config = _config()
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": config.build().state_dict(), "config": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"pickled objects other than tensors \((builtins\.)?print\)"):
        load_native3d(path)
    assert "payload ran" not in capsys.readouterr().out


def test_invalid_stored_config_is_refused(tmp_path: Path):
    config = _config()
    path = tmp_path / "model.pt"
    torch.save(
        {"state_dict": config.build().state_dict(), "config": config.to_dict() | {"num_classes": 3}}, path
    )
    with pytest.raises(CheckpointError, match="2 class_names for 3 classes"):
        load_native3d(path)


def test_save_refuses_a_model_that_does_not_fit(tmp_path: Path):
    with pytest.raises(CheckpointError, match="shape mismatches"):
        save_native3d(_config(num_classes=1, class_names=("a",)).build(), _config(), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_native3d(tmp_path / "absent.pt")


def test_a_first_format_file_is_converted_and_computes_what_it_did(tmp_path: Path):
    """A native3d/1 file (3 guidance channels per class, click size in grid voxels) loads with zero
    weights on the new mask channels: with an empty mask it gives exactly its old output."""
    config = _config(spacing=(1.5, 1.5, 1.5), click_sigma=2.0)
    torch.manual_seed(0)
    old_width = 1 + 3 * config.num_classes
    old = SegResNet(spatial_dims=3, in_channels=old_width, out_channels=2, init_filters=8, dropout_prob=0.1)
    legacy = config.to_dict() | {"format": "native3d/1"}
    path = tmp_path / "old.pt"
    torch.save({"state_dict": old.state_dict(), "config": legacy}, path)

    net, loaded = load_native3d(path)
    assert loaded.click_sigma == 3.0  # 2 grid voxels of 1.5 mm
    x_old = torch.rand(1, old_width, 16, 16, 16)
    parts = [x_old[:, :1]]
    for c in range(config.num_classes):
        parts += [x_old[:, 1 + 3 * c : 4 + 3 * c], torch.zeros(1, 1, 16, 16, 16)]
    with torch.no_grad():
        assert torch.allclose(net(torch.cat(parts, 1)), old.eval()(x_old), atol=1e-4)
    # and the mask channel is a real input once trained: the converted weights are zero, not absent
    assert net.convInit.conv.weight.shape[1] == config.in_channels


def test_an_unknown_format_is_refused(tmp_path: Path):
    config = _config()
    path = tmp_path / "model.pt"
    torch.save(
        {"state_dict": config.build().state_dict(), "config": config.to_dict() | {"format": "x/9"}}, path
    )
    with pytest.raises(CheckpointError, match="neither 'native3d/2' nor 'native3d/1'"):
        load_native3d(path)
