"""``python -m ml_worker peft-compare``: PEFT methods x labelled cases from one base (see
:mod:`ml_worker.experiments.compare`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ml_worker.cli import arg, command, step_bar

REPORT_NAME = "peft_compare.json"  # the report so far, rewritten after every row: a rerun goes on from it
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
        arg(
            "--out",
            type=Path,
            required=True,
            help="folder for peft_compare.json (rewritten after every row; a rerun with the same settings "
            "goes on from it, and may add methods or shots), adapters and the base",
        ),
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
    from ml_worker.experiments.compare import CompareConfig, peft_compare
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.checkpoints import CheckpointError
    from ml_worker.models.native3d import Native3DConfig, load_native3d

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
            model = Native3DConfig.for_labels(
                names, roi_size=roi, init_filters=pick(args.init_filters, 16, 8)
            )
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
        earlier, keep = _resumed(args.out)
        report = peft_compare(
            train_cases,
            config=config,
            out=args.out,
            base=args.base,
            device=args.device,
            on_row=_compare_row_shown,
            progress_factory=step_bar,
            earlier=earlier,
            on_report=keep,
        )
    except (ValueError, AdapterError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _compare_written(args.out, report)


def _compare_row_shown(row: dict[str, Any]) -> None:
    from tqdm import tqdm

    # everything a table needs, as each row ends
    keys = ("method", "shots", "dice_mean", "box3d_mean", "box3d", "curve", "train_seconds")
    tqdm.write(json.dumps({k: row[k] for k in keys if k in row}))


def _resumed(out: Path) -> tuple[dict[str, Any] | None, Any]:
    """(the report an earlier run left in `out`, or None; the callback that keeps it up to date)."""
    from ml_worker.experiments.effort import write_json_atomic

    path = out / REPORT_NAME
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a peft-compare report ({exc}): give another --out") from None
    return earlier, lambda report: write_json_atomic(path, report)


def _compare_written(out: Path, report: dict[str, Any]) -> int:
    from ml_worker.experiments.effort import write_json_atomic

    write_json_atomic(out / REPORT_NAME, report)
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
        earlier, keep = _resumed(args.out)
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
            earlier=earlier,
            on_report=keep,
        )
    except (ValueError, FileNotFoundError, AdapterError, CheckpointError, EncoderUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _compare_written(args.out, report)
