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


SAM_OR_NATIVE = {
    "native3d": "full,lora_conv,norm,decoder,linear_probe",
    "litemedsam": "decoder,encoder_lora,decoder_lora,bitfit,layernorm",
}


@command(
    "peft-compare",
    help="PEFT methods x labelled cases, on the native 3D net or LiteMedSAM, from one base: test Dice per "
    "class, trainable parameters, adapter bytes, train seconds as JSON (see ml_worker.experiments.compare)",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--shots", default="5,10,20", help="labelled cases per run, e.g. 5,10,20"),
        arg(
            "--model",
            default="native3d",
            choices=sorted(SAM_OR_NATIVE),
            help="native3d (pre-segmentation Dice) or litemedsam (box-prompted Dice, one box per slice; the "
            "base is the bundled foundation model, no base training: --roi, --init-filters, --base-* and "
            "--source-fraction do not apply)",
        ),
        arg(
            "--methods",
            default=None,
            help="PEFT methods, comma-separated (default: all five of the model: "
            + "; ".join(f"{m}: {v}" for m, v in SAM_OR_NATIVE.items())
            + ")",
        ),
        arg("--out", type=Path, required=True, help="folder for peft_compare.json, adapters and the base"),
        arg(
            "--base",
            type=Path,
            default=None,
            help="base weights (default: native3d trains one; litemedsam takes the bundled weights)",
        ),
        arg("--quick", action="store_true", help="smallest settings: 8 filters, 32^3, 2 steps"),
        arg("--epochs", type=int, default=None, help="adaptation epochs (default 10; quick 1)"),
        arg("--steps", type=int, default=None, help="adaptation steps per epoch (default 20; quick 2)"),
        arg("--base-epochs", type=int, default=None, help="base training epochs (default 40; quick 1)"),
        arg("--base-steps", type=int, default=None, help="base steps per epoch (default 25; quick 2)"),
        arg("--batch-size", type=int, default=None, help="samples per step (default 2; quick 1)"),
        arg(
            "--lr",
            type=float,
            default=None,
            help="AdamW lr of the adaptation (default 1e-3; litemedsam 1e-4)",
        ),
        arg("--base-lr", type=float, default=2e-3, help="learning rate of the base training (default 2e-3)"),
        arg("--roi", default=None, help="patch X,Y,Z (default 48,64,48; quick 32,32,32)"),
        arg("--init-filters", type=int, default=None, help="width of a trained base (default 16; quick 8)"),
        arg("--modality", default="MR", help="DICOM modality of the images (default MR)"),
        arg("--test-fraction", type=float, default=0.2, help="fixed test part (default 0.2)"),
        arg("--source-fraction", type=float, default=0.4, help="fixed base-training part (default 0.4)"),
        arg("--test-limit", type=int, default=None, help="score on N test cases (default all; quick 2)"),
        arg("--seed", type=int, default=0, help="seed of every run (default 0)"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
        arg(
            "--cache-dir",
            type=Path,
            default=None,
            help="litemedsam: keep slice embeddings here across runs (interactive-eval's --cache-dir)",
        ),
        arg("--encoder", default="auto", help="litemedsam: image encoder runtime (default auto)"),
    ],
)
def peft_compare_command(args: argparse.Namespace) -> int:
    import torch

    from ml_worker.adaptation.peft import AdapterError
    from ml_worker.adaptation.train import TrainCase, TrainConfig
    from ml_worker.adaptation.train_cli import _label_set
    from ml_worker.experiments.compare import CompareConfig, default_model, peft_compare
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.checkpoints import CheckpointError
    from ml_worker.models.native3d import load_native3d

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    q = args.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    try:
        shots = tuple(int(v) for v in args.shots.split(",") if v.strip())
        methods = tuple(
            m.strip() for m in (args.methods or SAM_OR_NATIVE[args.model]).split(",") if m.strip()
        )
        if args.model == "litemedsam":
            return _sam_compare(args, shots=shots, methods=methods, pick=pick)
        roi = tuple(int(v) for v in pick(args.roi, "48,64,48", "32,32,32").split(","))
        cases = find_cases(args.images, args.labels)
        if args.base is not None:
            model = None
            values = load_native3d(args.base)[1].label_values
        else:
            names = _label_set(args.labels, cases)
            model = default_model(names, roi_size=roi, init_filters=pick(args.init_filters, 16, 8))
            values = model.label_values
        batch = pick(args.batch_size, 2, 1)
        common = {"batch_size": batch, "seed": args.seed, "modality": args.modality}
        config = CompareConfig(
            methods=methods,
            shots=shots,
            adapt=TrainConfig(
                epochs=pick(args.epochs, 10, 1),
                steps_per_epoch=pick(args.steps, 20, 2),
                lr=args.lr or 1e-3,
                **common,
            ),
            base=TrainConfig(
                epochs=pick(args.base_epochs, 40, 1),
                steps_per_epoch=pick(args.base_steps, 25, 2),
                lr=args.base_lr,
                **common,
            ),
            model=model,
            test_fraction=args.test_fraction,
            source_fraction=args.source_fraction,
            test_limit=pick(args.test_limit, 0, 2),
        )
        train_cases = [
            TrainCase(image=c.image, label=c.label, labelled=values, case_id=c.name) for c in cases
        ]
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        report = peft_compare(
            train_cases,
            config=config,
            out=args.out,
            base=args.base,
            device=args.device,
            on_row=_compare_row_shown,
            progress_factory=step_bar,
        )
    except (ValueError, AdapterError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _compare_written(args.out, report)


def _compare_row_shown(row: dict[str, Any]) -> None:
    from tqdm import tqdm

    tqdm.write(json.dumps({k: row[k] for k in ("method", "shots", "dice_mean", "train_seconds")}))


def _compare_written(out: Path, report: dict[str, Any]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "peft_compare.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["rows"], indent=1))
    return 0


def _sam_compare(args: argparse.Namespace, *, shots: tuple[int, ...], methods: tuple[str, ...], pick) -> int:
    """peft-compare --model litemedsam (see :func:`ml_worker.experiments.compare.sam_compare`)."""

    from ml_worker.adaptation.peft import AdapterError
    from ml_worker.adaptation.train import TrainCase
    from ml_worker.adaptation.train_cli import _label_set
    from ml_worker.adaptation.train_sam import SamTrainConfig
    from ml_worker.experiments.compare import sam_compare
    from ml_worker.inference.embeddings import EmbeddingCache
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.checkpoints import CheckpointError
    from ml_worker.models.encoders import EncoderUnavailable

    try:
        cases = find_cases(args.images, args.labels)
        values = tuple(sorted(_label_set(args.labels, cases)))
        train = SamTrainConfig(
            steps=pick(args.epochs, 10, 1) * pick(args.steps, 20, 2),
            batch_size=pick(args.batch_size, 2, 1),
            lr=args.lr or 1e-4,
            seed=args.seed,
        )
        train_cases = [
            TrainCase(image=c.image, label=c.label, labelled=values, case_id=c.name) for c in cases
        ]
        report = sam_compare(
            train_cases,
            methods=methods,
            shots=shots,
            train=train,
            out=args.out,
            base=args.base,
            test_fraction=args.test_fraction,
            test_limit=pick(args.test_limit, 0, 2),
            device=args.device,
            on_row=_compare_row_shown,
            embeddings=EmbeddingCache(max_bytes=4 << 30, directory=args.cache_dir),
            encoder=args.encoder,
        )
    except (ValueError, FileNotFoundError, AdapterError, CheckpointError, EncoderUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _compare_written(args.out, report)
