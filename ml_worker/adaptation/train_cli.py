"""``python -m ml_worker train``: supervised training of the native 3D net (guidance channels on) on
labelled NIfTI cases, with a progress bar; resumable; prints a JSON summary.

Held-out cases, never trained on, are scored at the end by pre-segmentation Dice (no prompts) per
class through the inference path (:meth:`~ml_worker.adaptation.train.Trainer.evaluate`):

- ``--test-fraction F``: a fixed hash split, :func:`ml_worker.adaptation.splits.partition` with its
  default salt and no source part: the cases are ordered by the sha256 of their ids (file names
  without the NIfTI suffix) and the first ``round(F * n)`` are held out. The same on every run and
  machine, and the very test part ``peft-compare --test-fraction F`` scores on. Their image file names
  go to ``OUT.test.txt`` (one a line; usable as ``--exclude`` here or in ``pretrain``).
- ``--exclude FILE``: the cases named in FILE (image file names or case ids, whitespace-separated)
  are held out; those present in the folders are scored.
- neither: every case trains, nothing is scored.

The run checkpoints after every epoch into ``--checkpoint-dir`` (default ``OUT`` with suffix
``.ckpt``); the same command again continues from there (``--no-resume`` starts afresh). ``OUT`` is
rewritten after every epoch too, so a run stopped early leaves the weights of its last epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from ml_worker.adaptation.pretrain_cli import _floats, _ints
from ml_worker.cli import arg, command

__all__ = ["held_out_split", "train_command"]


def held_out_split(
    case_ids: list[str], *, test_fraction: float | None = None, exclude: set[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` case ids: the hash split of :func:`~ml_worker.adaptation.splits.partition`
    with `test_fraction`, or the ids in `exclude` held out; both in the order of `case_ids`.

    Raises:
        ValueError: both or an invalid fraction; nothing left to train on.
    """
    from ml_worker.adaptation.splits import partition

    if test_fraction is not None and exclude:
        raise ValueError("give a test fraction or names to exclude, not both")
    if test_fraction is not None:
        held = set(partition(case_ids, test_fraction=test_fraction, source_fraction=0.0)["test"])
    else:
        held = set(exclude) & set(case_ids)
    train = [c for c in case_ids if c not in held]
    if not train:
        raise ValueError(f"no training cases left of {len(case_ids)} after holding out {len(held)}")
    return train, [c for c in case_ids if c in held]


def _label_set(labels: Path, cases: list[Any]) -> dict[int, str]:
    """Label value -> name: from ``dataset.json`` (see `label_names`), else the values in the files."""
    import numpy as np

    from ml_worker.inference.eval import label_names
    from ml_worker.io.volume import load_volume

    names = {v: n for v, n in label_names(labels).items() if v > 0}
    if names:
        return names
    found: set[int] = set()
    for case in cases:
        found |= {int(v) for v in np.unique(load_volume(case.label)[0]) if v > 0}
    if not found:
        raise ValueError(f"the label files in {labels} hold no structure (only 0)")
    return {v: f"label{v}" for v in sorted(found)}


@command(
    "train",
    help="Supervised training of the native 3D net (click/box guidance channels) on labelled NIfTI "
    "cases; hash-split held-out Dice per class; resumable; prints a JSON summary",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images"),
        arg("--labels", type=Path, required=True, help="folder of label maps with the same file names"),
        arg("--out", type=Path, required=True, help="native3d weights file to write"),
        arg("--exclude", type=Path, default=None, help="text file of image names / case ids to hold out"),
        arg(
            "--test-fraction",
            type=float,
            default=None,
            help="hold out this fixed hash-split fraction (names written to OUT.test.txt)",
        ),
        arg("--pretrained", type=Path, default=None, help="Volume Fusion weights (`pretrain`) to start from"),
        arg(
            "--init",
            type=Path,
            default=None,
            help="continue from this native 3D weights file (its network and label set; e.g. a longer or "
            "click-focused second stage)",
        ),
        arg("--max-iterations", type=int, default=4, help="simulated click rounds per sample, 0..N (4)"),
        arg("--epochs", type=int, default=20, help="epochs (default 20)"),
        arg("--steps-per-epoch", type=int, default=0, help="optimizer steps per epoch (default: one pass)"),
        arg("--batch-size", type=int, default=2, help="samples per step (default 2)"),
        arg("--lr", type=float, default=2e-3, help="AdamW peak learning rate, cosine decay (default 2e-3)"),
        arg("--roi", type=_ints, default=(48, 64, 48), help="patch X,Y,Z, multiples of 8 (default 48,64,48)"),
        arg("--spacing", type=_floats, default=None, help="resample to mm: S or R,A,S (default: keep)"),
        arg("--init-filters", type=int, default=16, help="network width (default 16)"),
        arg("--modality", default="MR", help="intensity normalisation: CT or other (default MR)"),
        arg("--prompt-fraction", type=float, default=0.7, help="samples trained interactively (0.7)"),
        arg("--validate-every", type=int, default=1, help="score the held-out cases every N epochs"),
        arg("--seed", type=int, default=0, help="seed (default 0)"),
        arg("--checkpoint-dir", type=Path, default=None, help="default: OUT with suffix .ckpt"),
        arg("--no-resume", action="store_true", help="start afresh even if a checkpoint exists"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
    ],
)
def train_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ml_worker.adaptation.peft import get_method
    from ml_worker.adaptation.pretrain import TransferError, transfer_pretrained
    from ml_worker.adaptation.train import CheckpointMismatchError, TrainCase, TrainConfig, Trainer
    from ml_worker.inference.eval import find_cases
    from ml_worker.models.checkpoints import CheckpointError, file_sha256, select_device
    from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if args.test_fraction is not None and args.exclude is not None:
            raise ValueError("--exclude and --test-fraction are alternatives: give one")
        cases = find_cases(args.images, args.labels)
        exclude = set(args.exclude.read_text().split()) if args.exclude else set()
        # a name in the exclude file may be the image file name or the case id
        exclude |= {c.name for c in cases if c.image.name in exclude}
        by_id = {c.name: c for c in cases}
        train_ids, held_ids = held_out_split(list(by_id), test_fraction=args.test_fraction, exclude=exclude)
        spacing = args.spacing
        if spacing is not None and len(spacing) == 1:
            spacing = spacing * 3
        names = _label_set(args.labels, cases)
        model = dataclasses.replace(
            Native3DConfig.for_labels(names, roi_size=args.roi, init_filters=args.init_filters),
            spacing=spacing,
        )
        values = model.label_values
        train = TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            modality=args.modality,
            prompt_fraction=args.prompt_fraction,
            max_iterations=args.max_iterations,
            validate_every=args.validate_every,
        )
        device = select_device(args.device)
        torch.manual_seed(args.seed)  # the initial weights
        transfer = None
        if args.init is not None:
            if args.pretrained is not None:
                raise ValueError("--init and --pretrained are alternatives: give one")
            network, model = load_native3d(args.init)
            if spacing is not None:  # the grid it works at from now on (same weights)
                model = dataclasses.replace(model, spacing=spacing)
            values = model.label_values
        else:
            network = model.build()
        if args.pretrained is not None:
            transfer = transfer_pretrained(args.pretrained, network).summary()
        trainer = Trainer(
            network=network,
            config=model,
            method=get_method("native3d", "full"),
            train=train,
            base_sha256=file_sha256(args.init or args.pretrained) if (args.init or args.pretrained) else None,
            device=device,
            checkpoint_dir=args.checkpoint_dir or args.out.with_suffix(".ckpt"),
        )
    except (ValueError, OSError, CheckpointError, TransferError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def case(name: str) -> TrainCase:
        c = by_id[name]
        return TrainCase(image=c.image, label=c.label, labelled=values, case_id=c.name)

    train_cases = [case(n) for n in train_ids]
    held_out = [case(n) for n in held_ids]
    held_file = None
    if args.test_fraction is not None:
        held_file = Path(f"{args.out}.test.txt")
        held_file.parent.mkdir(parents=True, exist_ok=True)
        held_file.write_text("".join(f"{by_id[n].image.name}\n" for n in held_ids))

    steps_per_epoch = train.steps_per_epoch or math.ceil(len(train_cases) / train.batch_size)
    ran = {"steps": 0}
    with tqdm(total=steps_per_epoch * train.epochs, unit="step", desc="train") as bar:

        def on_progress(epoch: int, step: int, total: int, metrics: dict[str, float]) -> None:
            if "validation_dice" in metrics:
                tqdm.write(json.dumps({"epoch": epoch, "step": step} | metrics), file=sys.stderr)
                bar.set_postfix({"epoch": epoch, "val_dice": round(metrics["validation_dice"], 4)})
                return
            ran["steps"] += 1
            bar.n = step
            bar.set_postfix({"epoch": epoch, "loss": round(metrics["loss"], 4)})
            if step % steps_per_epoch == 0:
                # the epoch's last step: keep its weights in OUT, so a run stopped early leaves them
                save_native3d(trainer.network, model, args.out)

        trainer.progress = on_progress
        try:
            result = trainer.fit(train_cases, validation=held_out, resume=not args.no_resume)
        except (ValueError, CheckpointMismatchError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    save_native3d(trainer.network, model, args.out)
    per_case = result.validation or (trainer.evaluate(held_out) if held_out else {})
    classes = model.class_names
    validation = None
    if per_case:
        validation = {
            "cases": len(per_case),
            "dice": {n: float(np.mean([s[n] for s in per_case.values()])) for n in classes},
            "dice_mean": float(np.mean([np.mean(list(s.values())) for s in per_case.values()])),
        }
    done = len(result.history)
    summary = {
        "out": str(args.out),
        "sha256": file_sha256(args.out),
        "labels": model.labels,
        "train_cases": len(train_cases),
        "held_out_cases": len(held_out),
        "held_out_file": None if held_file is None else str(held_file),
        "validation": validation,
        "epochs": done,
        "steps_per_epoch": steps_per_epoch,
        "steps": done * steps_per_epoch,
        "steps_this_call": ran["steps"],
        "resumed_from_epoch": done - ran["steps"] // steps_per_epoch,
        "seconds": round(result.seconds, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "pretrained": transfer,
        "history": result.history,
    }
    print(json.dumps(summary, indent=1))
    return 0
