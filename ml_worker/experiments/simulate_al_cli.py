"""``python -m ml_worker al-simulate``: the active-learning simulation benchmark on labelled NIfTI cases.

Strategies x seeds, each from a cold start of ``--initial`` cases through ``--rounds`` rounds of
``--per-round`` selections, the native 3D net warm-started round to round, test Dice after every round,
and a fully supervised reference (see :mod:`ml_worker.experiments.simulate_al` for the protocol and
the steps rule of the reference). Writes ``OUT/results.json`` and ``OUT/al_curve.png``; prints a JSON
summary (mean test Dice per strategy at each number of labelled cases, its difference to ``random``,
wall seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from ml_worker.adaptation.pretrain_cli import _floats, _ints
from ml_worker.adaptation.train_cli import _label_set
from ml_worker.cli import arg, command

__all__ = ["FULL", "QUICK", "al_simulate_command"]

# Settings an option left out takes: FULL normally, QUICK with --quick (0 limits: every case).
FULL: dict[str, Any] = {
    "initial": 5,
    "per_round": 5,
    "rounds": 5,
    "seeds": 3,
    "initial_steps": 200,
    "round_steps": 100,
    "roi": (48, 64, 48),
    "spacing": None,
    "init_filters": 16,
    "pool_limit": 0,
    "test_limit": 0,
    "mc_samples": 8,
}
QUICK: dict[str, Any] = {
    "initial": 4,
    "per_round": 4,
    "rounds": 3,
    "seeds": 2,
    "initial_steps": 40,
    "round_steps": 20,
    "roi": (24, 32, 24),
    "spacing": (2.0,),
    "init_filters": 8,
    "pool_limit": 40,
    "test_limit": 10,
    "mc_samples": 4,
}


def _shown(value: Any) -> str:
    if value is None:
        return "keep"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "all" if value == 0 else str(value)


def _default(key: str) -> str:
    return f"default {_shown(FULL[key])}; quick {_shown(QUICK[key])}"


QUICK_HELP = (
    "small settings that finish in under 10 minutes on 2 CPU cores (hippocampus, 3 strategies, "
    "--threads 1): " + ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in QUICK.items())
)


@command(
    "al-simulate",
    help="Active-learning simulation: strategies x seeds, cold start by diversity, rounds of selection "
    "with a labelling oracle and warm-started training of the native 3D net; test Dice per round, a "
    "fully supervised reference, results.json, al_curve.png and a JSON summary",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images (the pool)"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--test-images", type=Path, default=None, help="test images (default: a fixed hash split)"),
        arg("--test-labels", type=Path, default=None, help="labels of --test-images"),
        arg(
            "--strategies",
            default="random,entropy,tta,mc_dropout,diversity,hybrid",
            help="selection strategies, comma-separated (default: random,entropy,tta,mc_dropout,"
            "diversity,hybrid; disagreement is known too)",
        ),
        arg(
            "--initial",
            type=int,
            default=None,
            help=f"cases labelled by the cold start ({_default('initial')})",
        ),
        arg(
            "--per-round", type=int, default=None, help=f"cases selected per round ({_default('per_round')})"
        ),
        arg("--rounds", type=int, default=None, help=f"rounds after the cold start ({_default('rounds')})"),
        arg("--seeds", type=int, default=None, help=f"runs per strategy, seeds 0..N-1 ({_default('seeds')})"),
        arg("--out", type=Path, required=True, help="folder for results.json and al_curve.png"),
        arg("--quick", action="store_true", help=QUICK_HELP),
        arg(
            "--initial-steps",
            type=int,
            default=None,
            help=f"steps of the first model, from scratch ({_default('initial_steps')})",
        ),
        arg(
            "--round-steps",
            type=int,
            default=None,
            help=f"steps of each warm-started round ({_default('round_steps')})",
        ),
        arg(
            "--reference-steps",
            type=int,
            default=None,
            help="steps of the fully supervised reference (default: initial + rounds x round steps)",
        ),
        arg(
            "--pretrained",
            type=Path,
            default=None,
            help="start every network from this Volume Fusion pretraining file (python -m ml_worker "
            "pretrain, same --init-filters) instead of a random initialisation",
        ),
        arg("--batch-size", type=int, default=2, help="samples per step (default 2)"),
        arg(
            "--lr", type=float, default=2e-3, help="AdamW peak lr of the first model and the reference (2e-3)"
        ),
        arg("--round-lr", type=float, default=1e-3, help="AdamW peak lr of each round (default 1e-3)"),
        arg("--roi", type=_ints, default=None, help=f"patch X,Y,Z, multiples of 8 ({_default('roi')})"),
        arg(
            "--spacing",
            type=_floats,
            default=None,
            help=f"resample to mm: S or R,A,S ({_default('spacing')})",
        ),
        arg("--init-filters", type=int, default=None, help=f"network width ({_default('init_filters')})"),
        arg("--modality", default="MR", help="intensity normalisation: CT or other (default MR)"),
        arg("--prompt-fraction", type=float, default=0.5, help="samples with simulated prompts (0.5)"),
        arg("--test-fraction", type=float, default=0.2, help="fixed hash-split test part (default 0.2)"),
        arg("--pool-limit", type=int, default=None, help=f"first N pool cases ({_default('pool_limit')})"),
        arg("--test-limit", type=int, default=None, help=f"first N test cases ({_default('test_limit')})"),
        arg("--mc-samples", type=int, default=None, help=f"MC-dropout passes ({_default('mc_samples')})"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
    ],
)
def al_simulate_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ml_worker.adaptation.train import TrainCase, TrainConfig
    from ml_worker.cli import step_bar
    from ml_worker.experiments.simulate_al import (
        CURVE_NAME,
        RESULTS_NAME,
        SimulationConfig,
        run_simulation,
        split_cases,
    )
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.native3d import Native3DConfig
    from ml_worker.uncertainty.scorers import ScoringConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    chosen = QUICK if args.quick else FULL
    s = {k: chosen[k] if getattr(args, k) is None else getattr(args, k) for k in FULL}
    try:
        if (args.test_images is None) != (args.test_labels is None):
            raise ValueError("--test-images and --test-labels go together")
        if s["seeds"] < 1 or s["pool_limit"] < 0 or s["test_limit"] < 0:
            raise ValueError("--seeds must be >= 1, --pool-limit and --test-limit >= 0")
        cases = find_cases(args.images, args.labels)
        spacing = s["spacing"]
        if spacing is not None and len(spacing) == 1:
            spacing = spacing * 3
        model = dataclasses.replace(
            Native3DConfig.for_labels(
                _label_set(args.labels, cases), roi_size=s["roi"], init_filters=s["init_filters"]
            ),
            spacing=spacing,
        )

        def train_cases(found: list[Any]) -> list[TrainCase]:
            return [
                TrainCase(image=c.image, label=c.label, labelled=model.label_values, case_id=c.name)
                for c in found
            ]

        test = None
        if args.test_images is not None:
            test = train_cases(find_cases(args.test_images, args.test_labels))
        pool, test = split_cases(
            train_cases(cases),
            test=test,
            test_fraction=args.test_fraction,
            pool_limit=s["pool_limit"],
            test_limit=s["test_limit"],
        )
        common = {
            "batch_size": args.batch_size,
            "modality": args.modality,
            "prompt_fraction": args.prompt_fraction,
        }
        config = SimulationConfig(
            strategies=tuple(v.strip() for v in args.strategies.split(",") if v.strip()),
            initial=s["initial"],
            per_round=s["per_round"],
            rounds=s["rounds"],
            seeds=tuple(range(s["seeds"])),
            model=model,
            initial_train=TrainConfig(epochs=1, steps_per_epoch=s["initial_steps"], lr=args.lr, **common),
            round_train=TrainConfig(epochs=1, steps_per_epoch=s["round_steps"], lr=args.round_lr, **common),
            reference_steps=args.reference_steps or 0,
            pretrained=args.pretrained,
            scoring=ScoringConfig(mc_samples=s["mc_samples"]),
        )
        config.check_pool(len(pool))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    total = len(config.strategies) * len(config.seeds) * (config.rounds + 1) + len(config.seeds)
    with tqdm(total=total, unit="round", desc="al-simulate") as bar:

        def on_round(row: dict[str, Any]) -> None:
            keys = (
                "strategy",
                "seed",
                "reference",
                "n_labelled",
                "dice_mean",
                "train_seconds",
                "score_seconds",
            )
            tqdm.write(json.dumps({k: row[k] for k in keys if k in row}), file=sys.stderr)
            bar.set_postfix({"run": row.get("strategy", "supervised"), "seed": row["seed"]})
            bar.update(1)

        try:
            report = run_simulation(
                pool,
                test,
                config=config,
                out=args.out,
                device=args.device,
                on_round=on_round,
                progress_factory=step_bar,
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    files = {"results": str(args.out / RESULTS_NAME), "curve": str(args.out / CURVE_NAME)}
    print(_json(report["summary"] | files))
    return 0


def _json(obj: Any) -> str:
    """Indented JSON with each list of numbers on one line (a curve reads as one row)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*([-+.,\deE\s]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
