"""``python -m ml_worker <command>``: benchmarks, simulations and evaluations that print JSON.

Adding a command is one function and one registration: decorate a function taking the parsed
arguments (returning an exit status) with `command`, naming its options with `arg`::

    @command("my-bench", help="what it measures", arguments=[arg("--n", type=int, default=3)])
    def my_bench(args: argparse.Namespace) -> int:
        ...

Heavy imports (torch, models) go inside the function, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One option of a command: the arguments of ``ArgumentParser.add_argument``."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    arguments: tuple[Arg, ...]


COMMANDS: dict[str, Command] = {}
# Modules that register more commands when imported (they import this one, so they load lazily).
COMMAND_MODULES = (
    "ml_worker.experiments.bench",
    "ml_worker.experiments.bench_encoder",
    "ml_worker.adaptation.pretrain_cli",
    "ml_worker.adaptation.train_cli",
    "ml_worker.experiments.simulate_al_cli",
    "ml_worker.experiments.bench_round",
    "ml_worker.experiments.effort_cli",
    "ml_worker.experiments.compare_cli",
)


def command(name: str, *, help: str, arguments: Sequence[Arg] = ()) -> Callable[[Handler], Handler]:
    """Register `handler` as ``python -m ml_worker <name>``."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, handler, tuple(arguments))
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="python -m ml_worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in COMMANDS.values():
        sub = commands.add_parser(spec.name, help=spec.help, description=spec.help)
        for option in spec.arguments:
            sub.add_argument(*option.flags, **option.options)
        sub.set_defaults(handler=spec.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def step_bar(name: str) -> Callable[[int, int, int, dict[str, float]], None]:
    """A training progress callback (``progress(epoch, step, total, metrics)``, see
    :data:`ml_worker.adaptation.train.ProgressCallback`) drawing its own tqdm bar, closed at the last step."""
    from tqdm import tqdm

    bar = tqdm(desc=name, unit="step", leave=False)

    def progress(epoch: int, step: int, total: int, metrics: dict[str, float]) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix({"epoch": epoch, "loss": round(metrics["loss"], 4)})
        if step == total:
            bar.close()

    return progress


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated label values, got {text!r}") from None


# ---- commands ------------------------------------------------------------------------------------


@command(
    "interactive-eval",
    help="Simulated interactive segmentation: a jittered 3D box then corrective clicks; Dice per step, "
    "Dice-AUC and latencies as JSON",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--model", default="litemedsam", choices=["litemedsam", "native3d"], help="default litemedsam"),
        arg("--checkpoint", type=Path, default=None, help="native3d: the trained weights file"),
        arg("--modality", default="MR", help="native3d: modality of the images (default MR)"),
        arg("--out", type=Path, required=True, help="JSON report to write (per case, per class, summary)"),
        arg("--limit", type=int, default=None, help="only the first N cases (by name)"),
        arg(
            "--cases",
            type=Path,
            default=None,
            help="text file of image names / case ids to evaluate, e.g. the held-out list `train` writes",
        ),
        arg(
            "--classes", type=_int_list, default=None, help="label values to evaluate, e.g. 1,2 (default all)"
        ),
        arg("--clicks", type=int, default=5, help="corrective clicks after the box (default 5); the NoC cap"),
        arg("--jitter", type=int, default=2, help="box sides move outwards by up to this (default 2)"),
        arg("--seed", type=int, default=0, help="seed of the box jitter (default 0)"),
        arg("--axis", type=int, default=2, choices=[0, 1, 2], help="slice axis of the 2D model (default 2)"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
        arg("--cache-dir", type=Path, default=None, help="keep slice embeddings here across runs"),
        arg("--cache-gb", type=float, default=2.0, help="in-memory embedding cache bound (default 2 GiB)"),
        arg(
            "--encoder",
            default="auto",
            help="LiteMedSAM image encoder runtime: auto (the fastest here), openvino-bf16, onnxruntime, "
            "openvino-f32, torch-bf16, torch-f32",
        ),
    ],
)
def interactive_eval_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ml_worker.inference.embeddings import EmbeddingCache
    from ml_worker.inference.eval import (
        EvalConfig,
        find_cases,
        interactive_eval,
        label_names,
        litemedsam_sessions,
    )
    from ml_worker.inference.native import Native3DSession, Native3DTask
    from ml_worker.models.checkpoints import (
        LITEMEDSAM_SHA256,
        CheckpointError,
        file_sha256,
        load_litemedsam,
        select_device,
    )
    from ml_worker.models.encoders import EncoderUnavailable, build_encoder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.clicks < 0 or args.jitter < 0 or (args.limit is not None and args.limit < 1):
        print("--clicks and --jitter must be >= 0, --limit >= 1", file=sys.stderr)
        return 2
    if (args.model == "native3d") != (args.checkpoint is not None):
        print("--checkpoint is needed with --model native3d, and only with it", file=sys.stderr)
        return 2
    try:
        device = select_device(args.device)
        cases = find_cases(args.images, args.labels)
        task = Native3DTask.from_checkpoint(args.checkpoint, device=device) if args.checkpoint else None
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cases is not None:
        wanted = set(args.cases.read_text().split())
        cases = [c for c in cases if c.name in wanted or c.image.name in wanted]
        if not cases:
            print(f"error: none of the cases named in {args.cases} is in {args.images}", file=sys.stderr)
            return 2
    cases = cases[: args.limit] if args.limit else cases
    config = EvalConfig(n_clicks=args.clicks, jitter=args.jitter, axis=args.axis, seed=args.seed)

    with tqdm(total=len(cases), unit="case", desc="interactive-eval") as bar:
        slices = tqdm(unit="slice", desc="encoding", leave=False)

        def on_slices(done: int, total: int) -> None:
            slices.total = total
            slices.n = done
            slices.refresh()

        def on_case(name: str, result: dict) -> None:
            slices.reset()
            scores = {c["name"]: c["dice"][-1] for c in result["classes"]}
            bar.set_postfix({"case": name, **scores})
            bar.update(1)

        if task is None:
            model_id = f"litemedsam/{LITEMEDSAM_SHA256[:16]}"
            model = load_litemedsam(device=device)
            try:
                encoder = build_encoder(model, args.encoder, weights_id=LITEMEDSAM_SHA256)
            except (ValueError, EncoderUnavailable) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            open_case = litemedsam_sessions(
                model=model,
                encoder=encoder,
                model_id=model_id,
                config=config,
                cache=EmbeddingCache(max_bytes=int(args.cache_gb * (1 << 30)), directory=args.cache_dir),
                device=device,
                on_slices=on_slices,
            )
        else:
            model_id = f"native3d/{file_sha256(args.checkpoint)[:16]}"

            def open_case(case, image, affine):
                def session(label: int) -> Native3DSession:
                    return Native3DSession(
                        task, image=image, affine=affine, modality=args.modality, label=label
                    )

                return session, None

        report = interactive_eval(
            open_case=open_case,
            model_id=model_id,
            cases=cases,
            config=config,
            classes=args.classes,
            names=label_names(args.labels),
            device=device,
            on_case=on_case,
        )
        slices.close()
    if task is None:
        report["encoder"] = encoder.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0
