"""Adapter files: save/load reproduces outputs, metadata survives, wrong base / corrupt / unsafe refused."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

from ml_worker.adaptation.adapter import (
    ADAPTER_FORMAT,
    AdapterFileError,
    BaseMismatchError,
    load_adapter,
    read_adapter,
    save_adapter,
)
from ml_worker.adaptation.peft import AdapterError, get_method, merge, trainable_parameters
from ml_worker.models.checkpoints import file_sha256
from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

CONFIG = Native3DConfig(
    num_classes=2, class_names=("a", "b"), init_filters=8, dropout=0.0, roi_size=(16, 16, 16)
)


@pytest.fixture
def base(tmp_path):
    """A base checkpoint on disk: (path, sha256)."""
    torch.manual_seed(0)
    path = save_native3d(CONFIG.build(), CONFIG, tmp_path / "base.pt")
    return path, file_sha256(path)


def _adapted(base_path, name: str, **params):
    model, _ = load_native3d(base_path)
    method = get_method("native3d", name, **params)
    method.apply(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval(), method


@pytest.mark.parametrize(
    "name, params", [("lora_conv", {"rank": 2, "alpha": 4.0}), ("norm", {}), ("full", {})]
)
def test_save_load_reproduces_outputs_and_metadata(tmp_path, base, name, params):
    base_path, sha = base
    model, method = _adapted(base_path, name, **params)
    x = torch.rand(1, CONFIG.in_channels, 16, 16, 16)
    with torch.no_grad():
        expected = model(x)
    meta = save_adapter(
        tmp_path / "a.adapter",
        model,
        method,
        base_sha256=sha,
        data_snapshot_ids=["mask:12", "mask:15"],
        training={"epochs": 3, "lr": 1e-3, "seed": 0},
        metrics={"validation_dice": 0.8},
        model_config=CONFIG.to_dict(),
    )
    fresh, _ = load_native3d(base_path)
    loaded, read = load_adapter(tmp_path / "a.adapter", fresh, sha)
    assert read == meta
    assert (
        read.method == name and params.items() <= read.method_params.items() and read.model_kind == "native3d"
    )
    assert read.base_sha256 == sha and read.data_snapshot_ids == ("mask:12", "mask:15")
    assert read.training["epochs"] == 3 and read.metrics == {"validation_dice": 0.8}
    assert Native3DConfig.from_dict(read.model_config) == CONFIG
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), expected, atol=1e-6)
        assert torch.allclose(merge(loaded)(x), expected, atol=1e-5)


def test_an_adapter_is_small_for_small_methods(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "norm")
    save_adapter(tmp_path / "n.adapter", model, method, base_sha256=sha)
    assert (tmp_path / "n.adapter").stat().st_size < base_path.stat().st_size / 20


def test_another_base_is_refused(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "norm")
    save_adapter(tmp_path / "a.adapter", model, method, base_sha256=sha)
    fresh, _ = load_native3d(base_path)
    with pytest.raises(BaseMismatchError, match="trained on base checkpoint"):
        load_adapter(tmp_path / "a.adapter", fresh, "0" * 64)


def test_truncated_and_corrupt_files_are_refused(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "decoder")
    path = tmp_path / "a.adapter"
    save_adapter(path, model, method, base_sha256=sha)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.adapter"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="truncated or corrupt"):
        load_adapter(truncated, load_native3d(base_path)[0], sha)

    # flip bytes inside a tensor's storage: the zip still opens, the digest does not match
    obj = torch.load(path, weights_only=True)
    first = sorted(obj["tensors"])[0]
    obj["tensors"][first] = obj["tensors"][first] + 1.0
    corrupt = tmp_path / "corrupt.adapter"
    torch.save(obj, corrupt)
    with pytest.raises(AdapterFileError, match="do not match their recorded sha256"):
        load_adapter(corrupt, load_native3d(base_path)[0], sha)

    with pytest.raises(AdapterFileError, match="no adapter file"):
        read_adapter(tmp_path / "missing.adapter")


def test_a_file_with_pickled_code_is_refused_unrun(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.adapter"
    torch.save({"format": ADAPTER_FORMAT, "metadata": "{}", "tensors": {}, "x": Evil()}, path)
    with pytest.raises(AdapterFileError, match="pickled objects other than tensors"):
        read_adapter(path)
    other = tmp_path / "plain.pkl"
    other.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(AdapterFileError):
        read_adapter(other)


def test_unknown_method_and_wrong_kind_are_refused(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "norm")
    path = tmp_path / "a.adapter"
    save_adapter(path, model, method, base_sha256=sha)
    obj = torch.load(path, weights_only=True)
    meta = json.loads(obj["metadata"])

    meta["method"] = "prefix_tuning"
    torch.save({**obj, "metadata": json.dumps(meta)}, tmp_path / "unknown.adapter")
    with pytest.raises(AdapterError, match="unknown PEFT method 'prefix_tuning'"):
        load_adapter(tmp_path / "unknown.adapter", load_native3d(base_path)[0], sha)

    meta["method"], meta["model_kind"] = "norm", "litemedsam"
    torch.save({**obj, "metadata": json.dumps(meta)}, tmp_path / "kind.adapter")
    with pytest.raises(BaseMismatchError, match="for a litemedsam network"):
        load_adapter(tmp_path / "kind.adapter", load_native3d(base_path)[0], sha)

    meta["model_kind"], meta["format"] = "native3d", "ml_worker.adapter/0"
    torch.save({**obj, "metadata": json.dumps(meta)}, tmp_path / "format.adapter")
    with pytest.raises(AdapterFileError, match="format"):
        read_adapter(tmp_path / "format.adapter")


def test_tensors_that_do_not_fit_the_method_are_named(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "lora_conv", rank=2)
    path = tmp_path / "a.adapter"
    save_adapter(path, model, method, base_sha256=sha)
    obj = torch.load(path, weights_only=True)
    meta = json.loads(obj["metadata"])
    meta["method_params"]["rank"] = 4  # claims rank 4, holds rank-2 tensors
    torch.save({**obj, "metadata": json.dumps(meta)}, tmp_path / "rank.adapter")
    with pytest.raises(AdapterError, match="shape"):
        load_adapter(tmp_path / "rank.adapter", load_native3d(base_path)[0], sha)


def test_save_refuses_bad_inputs(tmp_path, base):
    base_path, sha = base
    model, method = _adapted(base_path, "norm")
    with pytest.raises(AdapterError, match="sha256 hex digest"):
        save_adapter(tmp_path / "a.adapter", model, method, base_sha256="abc")
    with pytest.raises(AdapterError, match="'metrics' is not plain JSON"):
        save_adapter(tmp_path / "a.adapter", model, method, base_sha256=sha, metrics={"dice": float("nan")})
    with pytest.raises(AdapterError, match="for litemedsam networks"):
        save_adapter(tmp_path / "a.adapter", model, get_method("litemedsam", "bitfit"), base_sha256=sha)
    assert not (tmp_path / "a.adapter").exists()
    untouched = copy.deepcopy(load_native3d(base_path)[0])
    with pytest.raises(AdapterError, match="no trainable parameters"):
        save_adapter(tmp_path / "a.adapter", untouched.requires_grad_(False), method, base_sha256=sha)
