"""Fast CPU runtimes for the LiteMedSAM image encoder, chosen at run time with a float32 fallback.

The encoder is the cost of LiteMedSAM on a CPU (the prompt decoder is ~0.1 s per prompt): every slice
must be encoded once before it can be prompted. Measured per 256x256 slice on the 2-core AVX512-BF16
development CPU, 2 threads (``python -m ml_worker bench-encoder``), and the agreement of the 3D masks
after a ground-truth box with those of torch float32 (Dice, anterior/posterior, hippocampus 001/003):

==================  ==========  ===========================================================
backend             s / slice   masks vs float32
==================  ==========  ===========================================================
``onnxruntime``     0.57        0.996-0.998 (float32: the same numbers up to rounding)
``openvino-f32``    0.59        (float32, the same graph)
``openvino-bf16``   0.32        0.93-0.97: bfloat16 moves the propagated masks too far
``torch-bf16``      0.87-0.98   0.92-0.98 (bf16 autocast, `checkpoints.amp_dtype`)
``torch-f32``       1.25-1.6    the reference; always available
==================  ==========  ===========================================================

``auto`` takes the first of `AUTO_ORDER` (the float32 runtimes, fastest first) that runs here; a
backend that fails to build (a missing package, an export error) falls back to the next, so a worker
always gets an encoder. The bfloat16 backends are there by name for whoever accepts their masks.
On CUDA the model runs in torch under `checkpoints.autocast` (these CPU runtimes are not used).

Each backend maps ``(B, 3, 256, 256)`` float32 images (see `litemedsam.preprocess_slice`) to
``(B, 256, 64, 64)`` float32 embeddings. The ONNX export of the encoder (~6 s) is written once per
weights file under `cache_dir` and reused by later workers: give another `weights_id` for other
weights (a fine-tuned or LoRA-merged encoder).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ml_worker.models.checkpoints import autocast, cpu_bf16_supported
from ml_worker.models.litemedsam import IMAGE_SIZE, LiteMedSAM

log = logging.getLogger(__name__)

AUTO_ORDER = ("onnxruntime", "openvino-f32", "torch-f32")  # masks within Dice 0.99 of float32


class EncoderUnavailable(RuntimeError):
    """A backend cannot run here (its package is missing, or the CPU lacks what it needs)."""


def default_cache_dir() -> Path:
    """Where exports are kept by default: ``$ML_WORKER_CACHE_DIR``, else ``~/.cache/ml_worker``."""
    if os.environ.get("ML_WORKER_CACHE_DIR"):
        return Path(os.environ["ML_WORKER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ml_worker"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class SliceEncoder(ABC):
    """The LiteMedSAM image encoder behind one runtime: ``encoder(images) -> embeddings``."""

    name: ClassVar[str]

    @classmethod
    def supported(cls) -> str | None:
        """None when this backend can run here, else why not."""
        return None

    @abstractmethod
    def __call__(self, images: Tensor) -> Tensor:
        """(B, 3, 256, 256) float32 images -> (B, 256, 64, 64) float32 embeddings (CPU tensors)."""


class TorchEncoder(SliceEncoder):
    """The model's own encoder in torch: float32 on a CPU (`dtype` bfloat16: under CPU autocast);
    on CUDA under `checkpoints.autocast`."""

    name = "torch-f32"
    dtype: ClassVar[torch.dtype | None] = None

    def __init__(self, model: LiteMedSAM, **_: object) -> None:
        self.model = model

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        device = next(self.model.parameters()).device
        images = images.to(device)
        if device.type != "cpu":
            with autocast(device):
                return self.model.encode(images).float().cpu()
        if self.dtype is None:
            return self.model.encode(images).float()
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model.encode(images).float()


class TorchBf16Encoder(TorchEncoder):
    name = "torch-bf16"
    dtype = torch.bfloat16

    @classmethod
    def supported(cls) -> str | None:
        return None if cpu_bf16_supported() else "this CPU has no native bfloat16 (AVX512-BF16/AMX)"


def onnx_export(model: LiteMedSAM, cache_dir: Path, weights_id: str) -> Path:
    """The encoder exported to ONNX (fixed input 1x3x256x256), made once per `weights_id` under
    `cache_dir` (temporary file, then rename: concurrent workers never read a partial file)."""
    path = Path(cache_dir) / f"litemedsam-encoder-{weights_id[:16]}.onnx"
    if path.is_file():
        return path
    if not _installed("onnx"):
        raise EncoderUnavailable("exporting the encoder to ONNX needs the package onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            torch.onnx.export(
                model.image_encoder,
                (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
                tmp,
                dynamo=False,
                input_names=["images"],
                output_names=["embeddings"],
                opset_version=17,
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _SlicewiseEncoder(SliceEncoder):
    """Runs an exported single-slice graph once per slice of a batch."""

    @abstractmethod
    def _one(self, image: np.ndarray) -> np.ndarray: ...

    def __call__(self, images: Tensor) -> Tensor:
        batch = images.detach().to("cpu", torch.float32).numpy()
        out = [self._one(np.ascontiguousarray(batch[i : i + 1])) for i in range(batch.shape[0])]
        return torch.from_numpy(np.concatenate(out, axis=0).astype(np.float32, copy=False))


class OnnxRuntimeEncoder(_SlicewiseEncoder):
    name = "onnxruntime"

    @classmethod
    def supported(cls) -> str | None:
        if not _installed("onnxruntime"):
            return "the package onnxruntime is not installed"
        return None

    def __init__(self, model: LiteMedSAM, *, cache_dir: Path, weights_id: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_export(model, cache_dir, weights_id)), options, providers=["CPUExecutionProvider"]
        )

    def _one(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": image})[0]


class OpenVinoEncoder(_SlicewiseEncoder):
    name = "openvino-f32"
    precision: ClassVar[str] = "f32"

    @classmethod
    def supported(cls) -> str | None:
        if not _installed("openvino"):
            return "the package openvino is not installed"
        return None

    def __init__(self, model: LiteMedSAM, *, cache_dir: Path, weights_id: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            str(onnx_export(model, cache_dir, weights_id)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": self.precision,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self.request = compiled.create_infer_request()

    def _one(self, image: np.ndarray) -> np.ndarray:
        return next(iter(self.request.infer({0: image}).values())).copy()


class OpenVinoBf16Encoder(OpenVinoEncoder):
    name = "openvino-bf16"
    precision = "bf16"

    @classmethod
    def supported(cls) -> str | None:
        reason = super().supported()
        if reason is not None:
            return reason
        if not cpu_bf16_supported():
            return "this CPU has no native bfloat16 (AVX512-BF16/AMX)"
        return None


ENCODERS: dict[str, type[SliceEncoder]] = {
    cls.name: cls
    for cls in (OpenVinoBf16Encoder, OnnxRuntimeEncoder, OpenVinoEncoder, TorchBf16Encoder, TorchEncoder)
}


def available_encoders() -> dict[str, str | None]:
    """Each backend's name -> None when it can run here, else why not."""
    return {name: cls.supported() for name, cls in ENCODERS.items()}


def build_encoder(
    model: LiteMedSAM,
    backend: str = "auto",
    *,
    cache_dir: Path | None = None,
    weights_id: str = "",
    threads: int | None = None,
    on_fallback: Callable[[str, str], None] | None = None,
) -> SliceEncoder:
    """The encoder of `model` on `backend` ("auto": the fastest this machine supports).

    Args:
        model: LiteMedSAM in eval mode (on CUDA, every backend name gives torch).
        backend: a name from `ENCODERS`, or "auto".
        cache_dir: where the ONNX export is kept (default `default_cache_dir`).
        weights_id: names the export (e.g. the weights' sha256): another checkpoint, another file.
        threads: CPU threads of the ONNX runtimes (default torch's).
        on_fallback: called with (backend, why) for each backend of "auto" that could not be built.

    Raises:
        ValueError: an unknown backend name (the message lists the known ones).
        EncoderUnavailable: a named backend that cannot run here (auto never raises it).
    """
    if backend != "auto" and backend not in ENCODERS:
        raise ValueError(f"unknown encoder backend {backend!r}; known: auto, {', '.join(ENCODERS)}")
    if next(model.parameters()).device.type != "cpu":
        return TorchEncoder(model)
    options = {
        "cache_dir": Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        "weights_id": weights_id or "unnamed",
        "threads": threads or torch.get_num_threads(),
    }
    names = AUTO_ORDER if backend == "auto" else (backend,)
    for name in names:
        cls = ENCODERS[name]
        reason = cls.supported()
        if reason is None:
            try:
                return cls(model, **options)
            except Exception as exc:  # an export or runtime that fails here: try the next one
                if backend != "auto":
                    raise EncoderUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc
                reason = f"{type(exc).__name__}: {exc}"
        if backend != "auto":
            raise EncoderUnavailable(f"{name}: {reason}")
        log.info("encoder backend %s not used: %s", name, reason)
        if on_fallback is not None:
            on_fallback(name, reason)
    raise AssertionError("torch-f32 is always available")  # pragma: no cover
