"""``python -m ml_worker bench-round``: the cost of one learning-loop round as the platform runs it.

On labelled NIfTI cases taken in file-name order (the first ``--train`` to train on, the next
``--validation`` as the locked validation split, the next ``--pool`` as the unlabelled pool; disjoint),
it runs :func:`~ml_worker.adaptation.round.adaptation_round` with the calls and settings of the
platform's adaptation job (``platform/learning/services.py: adaptation_run``, LearningPolicy defaults:
``lora_conv``, 4 epochs x 25 steps, lr 2e-3, batch 2, the default network; without ``--base`` the base
is a fresh :func:`~ml_worker.adaptation.round.initial_checkpoint` and the method ``full``, as the
platform does for a project's first round), then its pool-scoring job (``pool_score_run``):
:class:`~ml_worker.adaptation.round.PoolScorer` pre-segments and scores each pool volume with the
round's weights, embeds the labelled cases as diversity centres and ranks the pool (``hybrid``).

The round's parts are timed by wrapping the functions it calls (training, validation scoring of the
candidate and of the active model, the gate, writing the adapter and merged weights); the calls and
their arguments are the platform's. Prints JSON: seconds per part, validation Dice (mean, per class),
the gate's verdict, pool seconds (total, per volume p50/p95), peak resident memory, device, threads.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ml_worker.adaptation.pretrain_cli import _floats, _ints
from ml_worker.cli import arg, command
from ml_worker.experiments.bench import _peak_rss_mb, _percentiles

__all__ = ["PLATFORM_NETWORK", "bench_round", "bench_round_command"]

# platform/learning/models.py: default_network(), the network of a project without a pretrained base
PLATFORM_NETWORK: dict[str, Any] = {"init_filters": 8, "roi_size": (48, 64, 48), "spacing": (1.0, 1.0, 1.0)}


class _Phases:
    """Wall seconds spent in wrapped callables, summed per phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.trainer: Any = None

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began

        return wrapper

    def get(self, phase: str) -> float:
        return round(self.seconds.get(phase, 0.0), 3)


@contextlib.contextmanager
def _instrumented(device: str | None) -> Iterator[_Phases]:
    """Time the parts of :func:`adaptation_round` (patched for the duration, restored after); with
    `device`, the round's trainer runs there (the platform's worker takes its default device)."""
    from ml_worker.adaptation import round as round_module
    from ml_worker.adaptation.train import Trainer

    phases = _Phases()
    from_base = Trainer.from_base.__func__  # type: ignore[attr-defined]

    def traced_from_base(cls: type, path: Path, **kwargs: Any) -> Any:
        if device is not None:
            kwargs.setdefault("device", device)
        phases.trainer = from_base(cls, path, **kwargs)
        return phases.trainer

    patches = [
        (Trainer, "from_base", classmethod(phases.timed("setup", traced_from_base))),
        (Trainer, "fit", phases.timed("train", Trainer.fit)),
        (Trainer, "_save_checkpoint", phases.timed("train_checkpoints", Trainer._save_checkpoint)),
        (Trainer, "evaluate", phases.timed("validation", Trainer.evaluate)),
        (Trainer, "save_adapter", phases.timed("write", Trainer.save_adapter)),
        (round_module, "evaluate_task", phases.timed("active_validation", round_module.evaluate_task)),
        (round_module, "_verdict", phases.timed("gate", round_module._verdict)),
        (round_module, "merge", phases.timed("write", round_module.merge)),
        (round_module, "save_native3d", phases.timed("write", round_module.save_native3d)),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield phases
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def bench_round(
    *,
    images: Path,
    labels: Path,
    out: Path,
    n_train: int = 20,
    n_validation: int = 10,
    n_pool: int = 50,
    method: str = "lora_conv",
    base: Path | None = None,
    active: Path | None = None,
    epochs: int = 4,
    steps_per_epoch: int = 25,
    lr: float = 2e-3,
    seed: int = 0,
    modality: str = "MR",
    network: dict[str, Any] | None = None,
    strategy: str = "hybrid",
    device: str | None = None,
) -> dict[str, Any]:
    """One round and one pool scoring, timed; the report (see the module docstring).

    Raises:
        FileNotFoundError: a folder is missing, or an image has no label file.
        ValueError: too few cases for the split asked for, or invalid settings.
        CheckpointError, AdapterError: a bad `base` / `active` checkpoint or method.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from ml_worker.adaptation.round import GateOptions, PoolScorer, adaptation_round, initial_checkpoint
    from ml_worker.adaptation.train import TrainCase, TrainConfig, case_means
    from ml_worker.adaptation.train_cli import _label_set
    from ml_worker.cli import step_bar
    from ml_worker.inference.eval import find_cases

    if n_train < 1 or n_validation < 0 or n_pool < 0:
        raise ValueError("--train must be >= 1, --validation and --pool >= 0")
    cases = find_cases(images, labels)
    wanted = n_train + n_validation + n_pool
    if len(cases) < wanted:
        raise ValueError(
            f"{len(cases)} cases in {images}, fewer than --train {n_train} + --validation {n_validation} "
            f"+ --pool {n_pool} = {wanted}"
        )
    train_part = cases[:n_train]
    validation_part = cases[n_train : n_train + n_validation]
    pool_part = cases[n_train + n_validation : wanted]
    names = _label_set(labels, train_part + validation_part)
    values = tuple(sorted(names))

    def train_case(c: Any) -> TrainCase:
        return TrainCase(image=c.image, label=c.label, labelled=values, case_id=c.name)

    network = {**PLATFORM_NETWORK, **(network or {})}
    out = Path(out)
    round_dir = out / "round"
    if (round_dir / "checkpoint").exists():
        raise ValueError(f"{round_dir} holds a previous round (it would resume): give an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    init_seconds = None
    if base is None:  # the platform's first round: a seeded initialisation, trained fully
        initial_checkpoint(names, out / "init.pt", **network)
        base, method, init_seconds = out / "init.pt", "full", round(time.perf_counter() - began, 3)
    train = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        seed=seed,
        modality=modality,
        validate_every=epochs,  # as adaptation_run: the round scores validation itself, once
    )
    options = GateOptions()  # LearningPolicy defaults: margin 0.01, alpha 0.05, first_floor 0.5
    with _instrumented(device) as phases:
        result = adaptation_round(
            base=base,
            method=method,
            cases=[train_case(c) for c in train_part],
            validation=[train_case(c) for c in validation_part],
            train=train,
            out_dir=round_dir,
            active=active,
            snapshot_ids=[c.name for c in train_part + validation_part],
            options=options,
            progress=step_bar(f"round ({method})"),
        )
    trainer_device = str(phases.trainer.device)

    pool_began = time.perf_counter()
    scorer = PoolScorer(result.weights, modality=modality, device=device or trainer_device)
    load_seconds = time.perf_counter() - pool_began
    items, per_volume = [], []
    for c in tqdm(pool_part, unit="volume", desc="pool scoring", leave=False):
        t = time.perf_counter()
        item = scorer.item(c.name, c.image).item
        per_volume.append(time.perf_counter() - t)
        items.append(item)
    t = time.perf_counter()
    labelled = [PoolScorer.embedded(f"done-{c.name}", c.image) for c in train_part + validation_part]
    embed_seconds = time.perf_counter() - t
    t = time.perf_counter()
    ranked = scorer.rank(items, strategy=strategy, labelled=labelled) if items else []
    rank_seconds = time.perf_counter() - t
    pool_seconds = time.perf_counter() - pool_began

    per_case = result.validation
    classes = list(dict.fromkeys(n for scores in per_case.values() for n in scores))
    gate = result.gate
    total = result.seconds
    accounted = sum(phases.seconds.get(k, 0.0) for k in ("setup", "train", "validation",
                                                         "active_validation", "gate", "write"))  # fmt: skip
    return {
        "round": {
            "method": method,
            "base": str(base),
            "init_seconds": init_seconds,
            "setup_seconds": phases.get("setup"),
            "train_seconds": phases.get("train"),
            "train_checkpoint_seconds": phases.get("train_checkpoints"),
            "validation_seconds": phases.get("validation"),
            "active_validation_seconds": phases.get("active_validation") if active else None,
            "gate_seconds": phases.get("gate"),
            "write_seconds": phases.get("write"),
            "other_seconds": round(total - accounted, 3),
            "total_seconds": round(total, 3),
            "steps": epochs * steps_per_epoch,
            "seconds_per_step": round(phases.seconds.get("train", 0.0) / max(epochs * steps_per_epoch, 1), 3),
            "loss_per_epoch": [round(h["loss"], 4) for h in result.history],
        },
        "validation": {
            "cases": len(per_case),
            "dice_mean": None if result.validation_dice is None else round(result.validation_dice, 4),
            "dice_per_class": {
                n: round(float(np.mean([s[n] for s in per_case.values() if n in s])), 4) for n in classes
            },
            "active_dice_mean": (
                None
                if not result.active_validation
                else round(float(np.mean(list(case_means(result.active_validation).values()))), 4)
            ),
        },
        "gate": {
            "promotable": result.promotable,
            "reason": result.reason,
            "p_value": None if gate is None or gate.p_value is None else round(gate.p_value, 5),
            "mean_delta": None if gate is None else round(gate.mean_delta, 4),
        },
        "pool": {
            "volumes": len(items),
            "model": "the round's merged weights",
            "strategy": strategy,
            "load_model_seconds": round(load_seconds, 3),
            "seconds_per_volume": _percentiles(per_volume) if per_volume else None,
            "embed_labelled_seconds": round(embed_seconds, 3),
            "labelled_centres": len(labelled),
            "rank_seconds": round(rank_seconds, 3),
            "total_seconds": round(pool_seconds, 3),
            "top5": [r.volume_id for r in ranked[:5]],
        },
        "labels": {str(v): n for v, n in names.items()},
        "cases": {
            "train": [train_part[0].name, train_part[-1].name],
            "validation": [validation_part[0].name, validation_part[-1].name] if validation_part else [],
            "pool": [pool_part[0].name, pool_part[-1].name] if pool_part else [],
        },
        "wall_seconds": round(time.perf_counter() - began, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "device": trainer_device,
        "threads": torch.get_num_threads(),
    }


@command(
    "bench-round",
    help="One learning-loop round as the platform runs it (adaptation_round with the LearningPolicy "
    "defaults, then pool scoring with PoolScorer and hybrid ranking), timed part by part, as JSON",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--train", type=int, default=20, help="first N cases by name train (default 20)"),
        arg("--validation", type=int, default=10, help="the next N are the validation split (default 10)"),
        arg("--pool", type=int, default=50, help="the next N are the unlabelled pool (default 50)"),
        arg("--method", default="lora_conv", help="PEFT method with --base (default lora_conv)"),
        arg("--base", type=Path, default=None, help="base checkpoint (default: a fresh init, method full)"),
        arg("--active", type=Path, default=None, help="an active model to score and gate against"),
        arg("--epochs", type=int, default=4, help="epochs (default 4)"),
        arg("--steps-per-epoch", type=int, default=25, help="optimizer steps per epoch (default 25)"),
        arg("--lr", type=float, default=2e-3, help="AdamW peak learning rate (default 2e-3)"),
        arg("--seed", type=int, default=0, help="seed of the round (the platform uses the job id)"),
        arg("--modality", default="MR", help="intensity normalisation of the cases (default MR)"),
        arg("--roi", type=_ints, default=None, help="fresh init: patch X,Y,Z (default 48,64,48)"),
        arg("--init-filters", type=int, default=None, help="fresh init: network width (default 8)"),
        arg("--spacing", type=_floats, default=None, help="fresh init: mm R,A,S (default 1,1,1)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--out", type=Path, default=None, help="scratch folder kept after the run (default: a temp dir)"),
    ],
)
def bench_round_command(args: argparse.Namespace) -> int:
    import torch

    from ml_worker.adaptation.peft import AdapterError
    from ml_worker.models.checkpoints import CheckpointError

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    network = {}
    given = (("roi_size", args.roi), ("init_filters", args.init_filters), ("spacing", args.spacing))
    for key, value in given:
        if value is not None:
            network[key] = tuple(value) * 3 if key == "spacing" and len(value) == 1 else value
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-round-")))
        try:
            report = bench_round(
                images=args.images,
                labels=args.labels,
                out=out,
                n_train=args.train,
                n_validation=args.validation,
                n_pool=args.pool,
                method=args.method,
                base=args.base,
                active=args.active,
                epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                lr=args.lr,
                seed=args.seed,
                modality=args.modality,
                network=network,
                device=args.device,
            )
        except (ValueError, FileNotFoundError, CheckpointError, AdapterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    report["arguments"] = {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
        for k, v in vars(args).items()
        if k not in ("handler", "command")
    }
    print(json.dumps(report, indent=1))
    return 0
