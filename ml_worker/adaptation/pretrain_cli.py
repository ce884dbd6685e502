"""``python -m ml_worker pretrain``: Volume Fusion pretraining of the native 3D net (see
:mod:`ml_worker.adaptation.pretrain`), with a progress bar; prints a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml_worker.cli import arg, command


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def find_images(folder: Path, *, exclude: set[str] = frozenset(), limit: int | None = None) -> list[Path]:
    """The NIfTI files (``*.nii``, ``*.nii.gz``) directly in `folder`, by name, less `exclude` (names)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith((".nii", ".nii.gz"))
    )
    paths = [p for p in paths if p.name not in exclude]
    return paths[:limit] if limit else paths


@command(
    "pretrain",
    help="Self-supervised Volume Fusion pretraining (MIS-FM) of the native 3D net on unlabelled NIfTI "
    "volumes; resumable; prints a JSON summary",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of unlabelled NIfTI images"),
        arg("--out", type=Path, required=True, help="native3d weights file to write"),
        arg("--epochs", type=int, default=10, help="epochs (default 10)"),
        arg("--exclude", type=Path, default=None, help="text file of image file names to leave out"),
        arg("--limit", type=int, default=None, help="only the first N images (by name)"),
        arg("--roi", type=_ints, default=(64, 64, 64), help="crop X,Y,Z, multiples of 8 (default 64,64,64)"),
        arg("--spacing", type=_floats, default=None, help="resample to R,A,S mm (default: keep)"),
        arg("--modality", default="MR", help="intensity normalisation: CT or other (default MR)"),
        arg("--levels", type=int, default=5, help="fusion levels K (default 5)"),
        arg("--batch-size", type=int, default=2, help="fused pairs per step (default 2)"),
        arg("--steps-per-epoch", type=int, default=None, help="default: images / batch size"),
        arg("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)"),
        arg("--init-filters", type=int, default=16, help="network width (default 16)"),
        arg("--seed", type=int, default=0, help="seed (default 0)"),
        arg("--checkpoint-dir", type=Path, default=None, help="default: OUT with suffix .ckpt"),
        arg("--no-resume", action="store_true", help="start afresh even if a checkpoint exists"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
    ],
)
def pretrain_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ml_worker.adaptation.pretrain import PretrainConfig, PretrainError, PretrainProgress, pretrain
    from ml_worker.models.checkpoints import select_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        exclude = set(args.exclude.read_text().split()) if args.exclude else set()
        paths = find_images(args.images, exclude=exclude, limit=args.limit)
        if not paths:
            raise FileNotFoundError(f"no NIfTI images in {args.images}")
        config = PretrainConfig(
            levels=args.levels,
            roi_size=args.roi,
            spacing=args.spacing,
            modality=args.modality,
            epochs=args.epochs,
            batch_size=args.batch_size,
            steps_per_epoch=args.steps_per_epoch,
            lr=args.lr,
            init_filters=args.init_filters,
            seed=args.seed,
        )
        device = select_device(args.device)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with tqdm(total=None, unit="step", desc="pretrain") as bar:

        def on_progress(event: PretrainProgress) -> None:
            bar.total = event.epochs * event.steps
            bar.n = (event.epoch - 1) * event.steps + event.step
            bar.set_postfix({"epoch": event.epoch, "loss": round(event.loss, 4)})

        try:
            result = pretrain(
                paths,
                out=args.out,
                config=config,
                checkpoint_dir=args.checkpoint_dir,
                resume=not args.no_resume,
                device=device,
                progress=on_progress,
            )
        except PretrainError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    summary = result.summary() | {"volumes": len(paths), "device": str(device)}
    print(json.dumps(summary, indent=1))
    return 0
