"""Adapter files: the trained part of a PEFT-adapted model plus what it was made from, in one small file.

An adapter is versioned beside the frozen base checkpoint it was trained on (a ModelVersion is "base +
adapter"). The file is one ``torch.save`` of plain containers::

    {"format": "ml_worker.adapter/1",
     "metadata": "<JSON text>",             # AdapterMetadata, JSON so any tool can read it
     "tensors": {name: tensor}}             # adapter_state(model): the trained parameters only

It is read with ``torch.load(weights_only=True)``: tensors and plain containers, never pickled code.
The metadata records the format version, the base checkpoint's sha256, the model kind, the PEFT method
and its parameters, the training data snapshot ids, the training hyper-parameters and metrics, and a
sha256 of the tensors, so a corrupt file is refused even where the zip container still opens.
:func:`load_adapter` refuses an adapter made for another base, an unknown method, or a damaged file,
each with a message saying which.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ml_worker.adaptation.peft import (
    AdapterError,
    PeftMethod,
    adapter_state,
    count_trainable,
    get_method,
    load_adapter_state,
    model_kind,
)
from ml_worker.models.checkpoints import save_atomic

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterFileError",
    "AdapterMetadata",
    "BaseMismatchError",
    "load_adapter",
    "read_adapter",
    "save_adapter",
    "tensors_sha256",
]

ADAPTER_FORMAT = "ml_worker.adapter/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AdapterFileError(AdapterError):
    """An adapter file that is missing, truncated, corrupt, unsafe or of an unknown format."""


class BaseMismatchError(AdapterError):
    """An adapter that was trained on another base checkpoint or another kind of network."""


@dataclass(frozen=True)
class AdapterMetadata:
    """What an adapter file says about itself (all JSON-able).

    base_sha256: sha256 of the base checkpoint file the adapter was trained on.
    model_kind: ``"native3d"`` or ``"litemedsam"``.
    method, method_params: the PEFT method (:func:`~ml_worker.adaptation.peft.get_method`) and its
        parameters, so it can be re-applied before the tensors are loaded.
    data_snapshot_ids: ids of the training data (e.g. approved mask versions), in training order.
    training: hyper-parameters of the run (epochs, learning rate, seed, ...).
    metrics: results (e.g. validation Dice), free-form JSON.
    model_config: the base's configuration where it has one (``Native3DConfig.to_dict()``).
    trainable_parameters: number of trained scalars.
    tensors_sha256: digest of the stored tensors (see :func:`tensors_sha256`).
    format: the file format (:data:`ADAPTER_FORMAT`).
    """

    base_sha256: str
    model_kind: str
    method: str
    method_params: dict[str, Any] = field(default_factory=dict)
    data_snapshot_ids: tuple[str, ...] = ()
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None
    trainable_parameters: int = 0
    tensors_sha256: str = ""
    format: str = ADAPTER_FORMAT

    def to_json(self) -> str:
        """Strict JSON (no NaN or infinity).

        Raises:
            AdapterError: a value that JSON cannot hold (names the field).
        """
        data = asdict(self)
        data["data_snapshot_ids"] = list(self.data_snapshot_ids)
        for key, value in data.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise AdapterError(f"adapter metadata field {key!r} is not plain JSON: {exc}") from None
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> AdapterMetadata:
        """The inverse of :meth:`to_json`.

        Raises:
            AdapterFileError: not JSON, another format, unknown or missing fields.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise AdapterFileError(f"adapter metadata is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterFileError("adapter metadata is not a JSON object")
        if data.get("format") != ADAPTER_FORMAT:
            raise AdapterFileError(f"adapter format {data.get('format')!r} is not {ADAPTER_FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterFileError(f"adapter metadata has unknown fields {unknown}")
        try:
            meta = cls(**data)
        except TypeError as exc:
            raise AdapterFileError(f"adapter metadata is incomplete: {exc}") from None
        object.__setattr__(meta, "data_snapshot_ids", tuple(str(s) for s in meta.data_snapshot_ids))
        return meta


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """Digest of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_sha(value: str, what: str) -> str:
    value = str(value).lower()
    if not _SHA256.match(value):
        raise AdapterError(f"{what} must be a sha256 hex digest (64 hex characters), got {value!r}")
    return value


def save_adapter(
    path: Path,
    model: nn.Module,
    method: PeftMethod,
    *,
    base_sha256: str,
    data_snapshot_ids: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> AdapterMetadata:
    """Write the adapter of `model` (adapted with `method`) to `path`, atomically.

    Args:
        path: the file to write (its folder is created).
        model: the adapted model (``method.apply`` was called on it, then it was trained).
        method: the PEFT method; its name and parameters are recorded.
        base_sha256: sha256 of the base checkpoint file (:func:`ml_worker.models.checkpoints.file_sha256`).
        data_snapshot_ids, training, metrics, model_config: recorded in the metadata (plain JSON).

    Returns:
        The metadata written.

    Raises:
        AdapterError: a model of another kind than the method's, a bad sha256, or metadata that is not
            plain JSON (nothing is written then).
    """
    kind = model_kind(model)
    if kind != method.model_kind:
        raise AdapterError(f"method {method.name!r} is for {method.model_kind} networks, not {kind}")
    tensors = adapter_state(model)
    if not tensors:
        raise AdapterError("the model has no trainable parameters: was a PEFT method applied?")
    meta = AdapterMetadata(
        base_sha256=_check_sha(base_sha256, "base_sha256"),
        model_kind=kind,
        method=method.name,
        method_params=dict(method.params),
        data_snapshot_ids=tuple(str(s) for s in data_snapshot_ids),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        model_config=None if model_config is None else dict(model_config),
        trainable_parameters=count_trainable(model),
        tensors_sha256=tensors_sha256(tensors),
    )
    text = meta.to_json()
    path = Path(path)
    save_atomic({"format": ADAPTER_FORMAT, "metadata": text, "tensors": tensors}, path)
    return meta


def read_adapter(path: Path) -> tuple[AdapterMetadata, dict[str, Tensor]]:
    """The metadata and tensors of an adapter file, checked, without applying them to anything.

    Raises:
        AdapterFileError: no such file, truncated or not a PyTorch file, pickled objects other than
            tensors (refused unrun), another format, or tensors that do not match their recorded digest.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"no adapter file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise AdapterFileError(
            f"{path} holds pickled objects other than tensors{what}; refused, since loading it could run code"
        ) from None
    except Exception as exc:  # truncated zip, foreign file: RuntimeError, EOFError, ...
        raise AdapterFileError(
            f"{path} is not a readable adapter file (truncated or corrupt?): {type(exc).__name__}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != ADAPTER_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise AdapterFileError(
            f"{path} is not an adapter file of format {ADAPTER_FORMAT!r} (found {found!r})"
        )
    tensors = obj.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
    ):
        raise AdapterFileError(f"{path}: 'tensors' is not a mapping of names to tensors")
    try:
        meta = AdapterMetadata.from_json(obj.get("metadata"))
    except AdapterFileError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None
    if tensors_sha256(tensors) != meta.tensors_sha256:
        raise AdapterFileError(f"{path}: the tensors do not match their recorded sha256 (corrupt file)")
    return meta, dict(tensors)


def load_adapter(path: Path, base_model: nn.Module, base_sha256: str) -> tuple[nn.Module, AdapterMetadata]:
    """Put the adapter at `path` onto `base_model`; in place (pass a fresh copy of the base).

    The method recorded in the file is applied to `base_model` with its recorded parameters, then the
    tensors are loaded and checked name by name and shape by shape.

    Args:
        path: an adapter file from :func:`save_adapter`.
        base_model: the frozen base network, loaded from the checkpoint whose sha256 is `base_sha256`.
        base_sha256: sha256 of that checkpoint file.

    Returns:
        The adapted model (unmerged: :func:`~ml_worker.adaptation.peft.merge` folds LoRA for inference)
        and the file's metadata.

    Raises:
        AdapterFileError: a missing, truncated, corrupt or unsafe file.
        BaseMismatchError: the adapter was trained on another base checkpoint or kind of network.
        AdapterError: an unknown method, or tensors that do not fit the method on this base.
    """
    meta, tensors = read_adapter(path)
    base_sha256 = _check_sha(base_sha256, "base_sha256")
    if meta.base_sha256 != base_sha256:
        raise BaseMismatchError(
            f"{path} was trained on base checkpoint {meta.base_sha256[:16]}..., not on this base "
            f"{base_sha256[:16]}...: an adapter only fits the exact base it was trained on"
        )
    kind = model_kind(base_model)
    if meta.model_kind != kind:
        raise BaseMismatchError(f"{path} is an adapter for a {meta.model_kind} network, not for {kind}")
    method = get_method(meta.model_kind, meta.method, **meta.method_params)
    model = method.apply(base_model)
    try:
        load_adapter_state(model, tensors)
    except AdapterError as exc:
        raise AdapterError(f"{path}: {exc}") from None
    return model, meta
