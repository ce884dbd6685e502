"""Adaptation of the models to a site: PEFT methods, partial-label loss, training loop, validation gate.

What a learning round runs; the experiments that measure it are in :mod:`ml_worker.experiments`.

- :mod:`.losses`: ``PartialLabelLoss`` (sigmoid per class, BCE + Dice on the labelled channels only).
- :mod:`.peft`: the PEFT methods of both networks behind one interface, adapter state, merge.
- :mod:`.adapter`: adapter files (trained tensors + metadata), loaded only onto their exact base.
- :mod:`.train`: ``Trainer`` for the native 3D net (any PEFT method, resumable, seeded, AMP on CUDA).
- :mod:`.gate`: locked splits and the promotion gate (margin + one-sided paired Wilcoxon test).
"""

from ml_worker.adaptation.adapter import AdapterMetadata, load_adapter, read_adapter, save_adapter
from ml_worker.adaptation.gate import GateResult, gate, split_for
from ml_worker.adaptation.losses import PartialLabelLoss
from ml_worker.adaptation.peft import (
    METHODS,
    AdapterError,
    PeftMethod,
    adapter_state,
    get_method,
    load_adapter_state,
    merge,
    trainable_parameters,
)
from ml_worker.adaptation.train import TrainCase, TrainConfig, Trainer

__all__ = [
    "METHODS",
    "AdapterError",
    "AdapterMetadata",
    "GateResult",
    "PartialLabelLoss",
    "PeftMethod",
    "TrainCase",
    "TrainConfig",
    "Trainer",
    "adapter_state",
    "gate",
    "get_method",
    "load_adapter",
    "load_adapter_state",
    "merge",
    "read_adapter",
    "save_adapter",
    "split_for",
    "trainable_parameters",
]
