"""``python -m ml_worker effort-simulate``: a simulated annotation team, effort per case as the loop learns
(see :mod:`ml_worker.experiments.effort` for the protocol). Writes ``OUT/results.json``,
``OUT/effort.png`` and one state file per setting and seed under ``OUT/state/`` (a rerun continues
them); prints a JSON summary. Settings may run as parallel processes on one ``--out``
(``--settings manual`` in one, ``--settings loop-best`` in another, ...): each rewrites the results
from every state file present, and ``--report-only`` rewrites them without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ml_worker.adaptation.pretrain_cli import _floats, _ints
from ml_worker.cli import arg, command
from ml_worker.effort import DEFAULT_COSTS

__all__ = ["QUICK", "effort_simulate_command"]

# What --quick changes (options given explicitly still win)
# (a 2 mm grid and a 24x32x24 patch: a training step ~8x cheaper than at 1 mm, 48x64x48)
QUICK: dict[str, Any] = {
    "pool": 40,
    "seeds": "0,1,2",
    "round_every": 8,
    "roi": (24, 32, 24),
    "spacing": (2.0, 2.0, 2.0),
}
FULL: dict[str, Any] = {"seeds": "0", "round_every": 10, "roi": (48, 64, 48), "spacing": (1.0, 1.0, 1.0)}


def _grid(values: tuple[float, ...]) -> tuple[float, float, float]:
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) != 3:
        raise ValueError(f"--spacing takes one value or three, got {list(values)}")
    return tuple(values)


def _round_bars(name: str, step_bar):
    """A training progress callback that opens a fresh step bar at the first step of each round."""
    current: list = []

    def progress(epoch: int, step: int, total: int, metrics: dict[str, float]) -> None:
        if step == 1 and "loss" in metrics:
            current[:] = [step_bar(name)]
        if current and "loss" in metrics:
            current[0](epoch, step, total, metrics)

    return progress


@command(
    "effort-simulate",
    help="Simulated annotation team: effort per case (clicks, strokes, voxels painted, model seconds, "
    "estimated annotator time) for manual, frozen LiteMedSAM, the loop in random order and in the "
    "strategy's order; results.json, effort.png, a JSON summary; resumable",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--out", type=Path, required=True, help="output folder (state files, rounds, results)"),
        arg(
            "--settings",
            default="manual,frozen,loop-random,loop-best",
            help="comma-separated, of manual, frozen, loop-random, loop-best (default all four)",
        ),
        arg("--seeds", default=None, help="comma-separated seeds (default 0; quick 0,1,2)"),
        arg("--pool", type=int, default=None, help="pool size (default: all outside validation; quick 40)"),
        arg("--validation", type=int, default=5, help="locked validation cases the gate scores on (5)"),
        arg(
            "--quick",
            action="store_true",
            help="40-case pool, seeds 0,1,2, a round every 8 approvals, a 2 mm grid and 24x32x24 patches",
        ),
        arg("--round-every", type=int, default=None, help="approvals between rounds (default 10; quick 8)"),
        arg("--strategy", default="hybrid", help="the selection strategy of loop-best (default hybrid)"),
        arg("--method", default="lora_conv", help="PEFT method of rounds after the first (lora_conv)"),
        arg("--first-epochs", type=int, default=4, help="epochs of the first model (full; default 4)"),
        arg("--first-steps", type=int, default=25, help="steps per epoch of the first model (25)"),
        arg("--epochs", type=int, default=2, help="epochs of a later round (default 2)"),
        arg("--steps", type=int, default=25, help="steps per epoch of a later round (default 25)"),
        arg("--batch-size", type=int, default=2, help="samples per step (default 2)"),
        arg("--lr", type=float, default=2e-3, help="learning rate of every round (default 2e-3)"),
        arg("--init-filters", type=int, default=8, help="width of the native net (default 8)"),
        arg(
            "--roi", type=_ints, default=None, help="training patch X,Y,Z (default 48,64,48; quick 24,32,24)"
        ),
        arg(
            "--spacing",
            type=_floats,
            default=None,
            help="grid of the native net in mm, X,Y,Z or one value (default 1; quick 2)",
        ),
        arg(
            "--cold-start",
            default="litemedsam",
            choices=["litemedsam", "none"],
            help="interactive "
            "model of the loop before its first native model (default litemedsam, as the platform)",
        ),
        arg("--target", type=float, default=0.90, help="Dice per structure the annotator stops at (0.90)"),
        arg("--max-clicks", type=int, default=10, help="clicks per structure, at most (10)"),
        arg("--max-strokes", type=int, default=400, help="strokes per structure, at most (400)"),
        arg("--stroke-radius", type=int, default=3, help="brush disc radius in voxels (default 3)"),
        arg(
            "--axis", type=int, default=2, choices=[0, 1, 2], help="slice axis of strokes and LiteMedSAM (2)"
        ),
        arg(
            "--click-s",
            type=float,
            default=DEFAULT_COSTS.click,
            help=f"seconds per click ({DEFAULT_COSTS.click})",
        ),
        arg(
            "--stroke-s",
            type=float,
            default=DEFAULT_COSTS.stroke,
            help=f"seconds per stroke ({DEFAULT_COSTS.stroke})",
        ),
        arg(
            "--box-s", type=float, default=DEFAULT_COSTS.box, help=f"seconds per 3D box ({DEFAULT_COSTS.box})"
        ),
        arg(
            "--review-s",
            type=float,
            default=DEFAULT_COSTS.review,
            help=f"seconds to review a case ({DEFAULT_COSTS.review})",
        ),
        arg("--modality", default="MR", help="DICOM modality of the images (default MR)"),
        arg("--encoder", default="auto", help="LiteMedSAM image encoder runtime (default auto)"),
        arg(
            "--report-only", action="store_true", help="only rewrite results.json and the PNG from the states"
        ),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
    ],
)
def effort_simulate_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ml_worker.adaptation.train_cli import _label_set
    from ml_worker.cli import step_bar
    from ml_worker.effort import ActionCosts
    from ml_worker.experiments.effort import (
        SETTINGS,
        AnnotatorConfig,
        EffortConfig,
        run_setting,
        split_cases,
        write_results,
    )
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.checkpoints import CheckpointError

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def pick(value: Any, key: str, full: Any = None) -> Any:
        return value if value is not None else (QUICK[key] if args.quick else FULL.get(key, full))

    try:
        settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown or not settings:
            raise ValueError(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
        config = EffortConfig(
            seeds=tuple(int(v) for v in str(pick(args.seeds, "seeds")).split(",") if v.strip()),
            pool_size=pick(args.pool, "pool", None),
            validation=args.validation,
            round_every=pick(args.round_every, "round_every"),
            strategy=args.strategy,
            method=args.method,
            first_epochs=args.first_epochs,
            first_steps=args.first_steps,
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            init_filters=args.init_filters,
            roi_size=tuple(pick(args.roi, "roi")),
            spacing=_grid(pick(args.spacing, "spacing")),
            modality=args.modality,
            cold_start=args.cold_start,
            sam_axis=args.axis,
            encoder=args.encoder,
            annotator=AnnotatorConfig(
                target=args.target,
                max_clicks=args.max_clicks,
                max_strokes=args.max_strokes,
                stroke_radius=args.stroke_radius,
                axis=args.axis,
            ),
            costs=ActionCosts(click=args.click_s, stroke=args.stroke_s, box=args.box_s, review=args.review_s),
        )
        from ml_worker.uncertainty.strategies import get_strategy

        get_strategy(config.strategy)  # an unknown name fails here, listing the known ones
        cases = find_cases(args.images, args.labels)
        names = _label_set(args.labels, cases)
        _, pool = split_cases(cases, config)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    began = time.perf_counter()
    if not args.report_only:
        for seed in config.seeds:  # seed by seed: a run cut short still compares the settings
            for setting in settings:
                with tqdm(total=len(pool), unit="case", desc=f"{setting} seed {seed}") as bar:

                    def on_case(record: dict, done: int, total: int, bar=bar) -> None:
                        bar.n = done
                        bar.set_postfix(
                            {"case": record["case"], "min": round(record["annotator_seconds"] / 60, 2)}
                        )
                        bar.refresh()

                    try:
                        run_setting(
                            setting,
                            seed,
                            cases=cases,
                            out=args.out,
                            config=config,
                            names=names,
                            device=args.device,
                            on_case=on_case,
                            round_progress=_round_bars(f"{setting} seed {seed} round", step_bar),
                        )
                    except (ValueError, CheckpointError) as exc:
                        print(f"error: {exc}", file=sys.stderr)
                        return 2
                write_results(args.out, config=config)
    results = write_results(
        args.out,
        config=config,
        extra={
            "wall_seconds_this_call": round(time.perf_counter() - began, 1),
            "torch_threads": torch.get_num_threads(),
        },
    )
    summary = {
        "ratios": results["ratios"],
        "settings": {
            name: {k: v for k, v in data.items() if k not in ("curve", "rounds")}
            for name, data in results["settings"].items()
        },
        "wall_seconds_this_call": results["wall_seconds_this_call"],
    }
    print(json.dumps(summary, indent=1))
    return 0
