"""Image encoder runtimes: auto picks what this machine runs, falls back to float32 torch, and every
backend that runs here gives the embeddings of float32 torch within its tolerance."""

from __future__ import annotations

import pytest
import torch

from ml_worker.models import encoders
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256
from ml_worker.models.encoders import (
    ENCODERS,
    EncoderUnavailable,
    OpenVinoBf16Encoder,
    TorchBf16Encoder,
    available_encoders,
    build_encoder,
)
from ml_worker.models.litemedsam import LiteMedSAM

# Relative L2 error of the embeddings against torch float32: bfloat16 keeps ~3 significant digits.
TOLERANCE = {"torch-f32": 0.0, "onnxruntime": 1e-4, "openvino-f32": 1e-3, "torch-bf16": 0.08,
             "openvino-bf16": 0.08}  # fmt: skip


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(litemedsam: LiteMedSAM, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return litemedsam.encode(images)


@pytest.fixture
def nothing_fast(monkeypatch):
    """A CPU without bfloat16 and without ONNX Runtime or OpenVINO installed."""
    monkeypatch.setattr(encoders, "cpu_bf16_supported", lambda: False)
    monkeypatch.setattr(encoders, "_installed", lambda module: False)


def test_without_bf16_or_runtimes_auto_falls_back_to_float32_torch(
    nothing_fast, litemedsam, images, reference, tmp_path
):
    skipped = []
    encoder = build_encoder(
        litemedsam, "auto", cache_dir=tmp_path, on_fallback=lambda n, why: skipped.append(n)
    )
    assert encoder.name == "torch-f32" and skipped == list(encoders.AUTO_ORDER[:-1])
    torch.testing.assert_close(encoder(images), reference, rtol=1e-4, atol=1e-5)
    assert all(why for name, why in available_encoders().items() if name != "torch-f32")


@pytest.mark.parametrize("name", ["torch-bf16", "openvino-bf16", "onnxruntime"])
def test_a_named_backend_this_machine_cannot_run_is_refused(nothing_fast, litemedsam, name, tmp_path):
    with pytest.raises(EncoderUnavailable, match=name):
        build_encoder(litemedsam, name, cache_dir=tmp_path)


def test_auto_takes_the_fastest_float32_runtime_installed(litemedsam, tmp_path_factory):
    encoder = build_encoder(litemedsam, "auto", cache_dir=tmp_path_factory.getbasetemp() / "encoders")
    expected = next(name for name in encoders.AUTO_ORDER if ENCODERS[name].supported() is None)
    assert encoder.name == expected and "bf16" not in encoder.name  # bf16 masks stray too far


def test_an_unknown_backend_lists_the_known_ones(litemedsam):
    with pytest.raises(ValueError, match="known: auto, openvino-bf16"):
        build_encoder(litemedsam, "tensorrt")


def test_a_backend_that_fails_to_build_falls_back_to_the_next(monkeypatch, litemedsam, tmp_path):
    def broken(self, model, **options):
        raise RuntimeError("export failed")

    for cls in ENCODERS.values():
        if cls.name != "torch-f32":
            monkeypatch.setattr(cls, "__init__", broken)
    monkeypatch.setattr(encoders, "_installed", lambda module: True)
    monkeypatch.setattr(encoders, "cpu_bf16_supported", lambda: True)
    skipped = {}
    encoder = build_encoder(litemedsam, "auto", cache_dir=tmp_path, on_fallback=skipped.__setitem__)
    assert encoder.name == "torch-f32"
    assert skipped == {name: "RuntimeError: export failed" for name in encoders.AUTO_ORDER[:-1]}
    with pytest.raises(EncoderUnavailable, match="export failed"):
        build_encoder(litemedsam, "onnxruntime", cache_dir=tmp_path)  # by name: no quiet fallback


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_backend_this_machine_runs_agrees_with_float32(
    name, litemedsam, images, reference, tmp_path_factory
):
    why = ENCODERS[name].supported()
    if why is not None:
        pytest.skip(why)
    encoder = build_encoder(
        litemedsam, name, cache_dir=tmp_path_factory.getbasetemp() / "encoders", weights_id=LITEMEDSAM_SHA256
    )
    out = encoder(torch.cat([images, images.flip(-1)]))  # a batch of two
    assert out.shape == (2, 256, 64, 64) and out.dtype == torch.float32
    error = float((out[:1] - reference).norm() / reference.norm())
    assert error <= TOLERANCE[name], error


def test_bf16_backends_need_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(encoders, "cpu_bf16_supported", lambda: False)
    assert "bfloat16" in TorchBf16Encoder.supported()
    assert OpenVinoBf16Encoder.supported() is not None
