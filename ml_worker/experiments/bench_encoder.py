"""Benchmarks of LiteMedSAM at cold start, printing JSON.

- ``bench-encoder``: seconds per 256x256 slice of each image encoder runtime this machine runs
  (`ml_worker.models.encoders`), and how far each one's 3D masks after a ground-truth box are from
  those of torch float32 (Dice per structure): the numbers that choose ``auto``.
- `cold_start` (reported by ``bench-click``): the first mask after the first box on a never-seen
  volume, as the interactive worker answers it (load, normalise, encode the prompted slice, decode),
  then how long until the structure's slab and the whole volume are encoded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_worker.cli import arg, command


def _load(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    return (
        np.asarray(nib.load(str(image)).dataobj),
        np.rint(np.asarray(nib.load(str(label)).dataobj)).astype(np.int64),
    )


def _tight_box(labels: np.ndarray, value: int):
    from ml_worker.inference.prompts import Box3D

    where = np.argwhere(labels == value)
    return Box3D(value, tuple(int(v) for v in where.min(0)), tuple(int(v) for v in where.max(0)))


def cold_start(
    image: Path, label: Path, *, encoder: str = "auto", device: str | None = None, axis: int = 2
) -> dict[str, Any]:
    """Time the first box on a never-seen volume, as `InteractiveSegmenter` answers it (a warm worker:
    the model is loaded first and not counted), on the first structure of `label` (a tight box).

    Returns seconds to the first mask (its slice only), to the slab's mask (every slice of the box
    encoded by `InteractiveSegmenter.embed`, prompted slice first), to the whole volume encoded, and
    the Dice of the slab's mask against the label.
    """
    from ml_worker.inference.eval import dice
    from ml_worker.inference.interactive import InteractiveSegmenter
    from ml_worker.models.checkpoints import file_sha256

    array, labels = _load(image, label)
    value = int(min(v for v in np.unique(labels) if v != 0))
    box = _tight_box(labels, value)
    lo, hi = box.lo[axis], box.hi[axis]
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        began = time.perf_counter()
        segmenter = InteractiveSegmenter(embeddings_dir=Path(tmp), device=device, encoder=encoder, axis=axis)
        warm_s = time.perf_counter() - began
        request = {"volume_path": image, "volume_sha256": file_sha256(image), "shape": array.shape,
                   "label": value, "box": box, "clicks": ()}  # fmt: skip
        began = time.perf_counter()
        first = segmenter.segment(**request)
        first_s = time.perf_counter() - began
        store = segmenter.store(request["volume_sha256"], array.shape)
        slab_s: list[float] = []

        def on_slice(done: int, total: int) -> None:
            if not slab_s and store.readiness(lo, hi).complete:
                slab_s.append(time.perf_counter() - began)

        segmenter.embed(image, request["volume_sha256"], progress=on_slice)
        volume_s = time.perf_counter() - began
        grown = segmenter.segment(**request)
    return {
        "shape": list(array.shape),
        "label": value,
        "slab_slices": hi - lo + 1,
        "encoder": segmenter.encoder.name,
        "worker_start_s": round(warm_s, 3),
        "first_mask_s": round(first_s, 3),
        "first_mask_slices_encoded": first.slices_encoded,
        "slab_mask_s": round(slab_s[0] if slab_s else volume_s, 3),
        "volume_encoded_s": round(volume_s, 3),
        "dice_first_mask": round(dice(first.mask, labels == value), 4),
        "dice_slab_mask": round(dice(grown.mask, labels == value), 4),
    }


@command(
    "bench-encoder",
    help="Seconds per 256x256 slice of each LiteMedSAM image encoder runtime here, and the Dice of its 3D "
    "masks after a ground-truth box against torch float32's, as JSON",
    arguments=[
        arg("--images", type=Path, required=True, help="folder of NIfTI images (e.g. hippocampus imagesTr)"),
        arg("--labels", type=Path, required=True, help="their label maps"),
        arg("--limit", type=int, default=2, help="cases taken (default 2)"),
        arg("--threads", type=int, default=2, help="torch and runtime CPU threads (default 2)"),
        arg("--backends", default=None, help="comma-separated (default: every one that runs here)"),
        arg("--axis", type=int, default=2, choices=[0, 1, 2], help="slice axis (default 2)"),
        arg("--out", type=Path, default=None, help="also write the JSON here"),
    ],
)
def bench_encoder_command(args: argparse.Namespace) -> int:
    import torch

    from ml_worker.inference.embeddings import VolumeEmbeddings, encode_slices, normalise_mr
    from ml_worker.inference.eval import dice, find_cases
    from ml_worker.inference.sam3d import LiteMedSAM3D
    from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, load_litemedsam
    from ml_worker.models.encoders import ENCODERS, available_encoders, build_encoder

    torch.set_num_threads(args.threads)
    try:
        cases = find_cases(args.images, args.labels)[: args.limit]
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_litemedsam()
    runnable = available_encoders()
    names = args.backends.split(",") if args.backends else [n for n, why in runnable.items() if why is None]
    unknown = [n for n in names if n not in ENCODERS]
    if unknown:
        print(f"error: unknown backends {unknown}; known: {', '.join(ENCODERS)}", file=sys.stderr)
        return 2
    names = ["torch-f32", *[n for n in names if n != "torch-f32"]]  # the reference first
    encoders = {n: build_encoder(model, n, weights_id=LITEMEDSAM_SHA256, threads=args.threads) for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    agreement: dict[str, list[float]] = {n: [] for n in names}
    for case in cases:
        image, labels = _load(case.image, case.label)
        volume = normalise_mr(image)
        n_slices = volume.shape[args.axis]
        embedded = {n: np.empty((n_slices, 256, 64, 64), np.float16) for n in names}
        for k in range(n_slices):  # backends interleaved slice by slice: a busy machine hits all alike
            for n in names:
                began = time.perf_counter()
                embedded[n][k] = encode_slices(encoders[n], volume, [k], axis=args.axis)[0]
                seconds[n].append(time.perf_counter() - began)
        for value in (int(v) for v in np.unique(labels) if v != 0):
            box = _tight_box(labels, value)
            masks = {
                n: LiteMedSAM3D(
                    model, VolumeEmbeddings(embedded[n], image.shape, args.axis), label=value
                ).start(box)
                for n in names
            }
            for n in names:
                agreement[n].append(dice(masks[n], masks["torch-f32"]))
        print(f"{case.name}: done", file=sys.stderr)
    reference = float(np.median(seconds["torch-f32"]))
    report = {
        "threads": args.threads,
        "cases": [c.name for c in cases],
        "not_runnable_here": {n: why for n, why in runnable.items() if why is not None},
        "backends": {
            n: {
                "seconds_per_slice_median": round(float(np.median(seconds[n])), 4),
                "seconds_per_slice_min": round(float(np.min(seconds[n])), 4),
                "speedup_vs_torch_f32": round(reference / float(np.median(seconds[n])), 2),
                "mask_dice_vs_torch_f32_min": round(float(np.min(agreement[n])), 4),
                "mask_dice_vs_torch_f32_mean": round(float(np.mean(agreement[n])), 4),
            }
            for n in names
        },
    }
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
