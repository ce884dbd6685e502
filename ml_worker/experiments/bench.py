"""Benchmarks of inference that print JSON: pre-segmentation throughput and click latency at scale.

- ``bench-presegment``: the native 3D net pre-segments real hippocampus volumes and a CT-sized
  synthetic volume (default 512x512x300); volumes/s, seconds per volume and the peak resident memory
  of each scenario, which runs in its own fresh process so one does not inflate the next. With
  ``--encode-slices N`` it also times the LiteMedSAM image encoder on N slices of each scenario
  and extrapolates to the whole volume (the embeddings computed at pre-segmentation for clicks).
- ``bench-click``: the interactive protocol of ``interactive-eval`` on a real hippocampus case
  resampled to a larger grid (default 256x256x128), so a structure spans as many slices as in a
  full-brain MR: click latency on cached embeddings is what an annotator waits for; beside it the
  cold start (the first mask after the first box on a never-seen volume, the case as it is and
  resampled: see `bench_encoder.cold_start`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_worker.cli import arg, command


def _shape(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a shape like 512x512x300, got {text!r}")
    return values  # type: ignore[return-value]


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def synthetic_ct(shape: tuple[int, int, int], *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (air, a soft-tissue body ellipse, bright spheres) and its affine."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n / 2 for n in shape]
    body = sum(((g - c) / (0.42 * n)) ** 2 for g, c, n in zip(grids, centre, shape, strict=True)) <= 1
    image = np.where(body, 40, -1000).astype(np.int16)
    for _ in range(6):
        at = [rng.uniform(0.3, 0.7) * n for n in shape]
        radius = rng.uniform(0.03, 0.08) * min(shape)
        ball = sum((g - a) ** 2 for g, a in zip(grids, at, strict=True)) <= radius**2
        image[ball] = 300
    image += rng.normal(0, 10, shape).astype(np.int16)
    affine = np.diag([0.75, 0.75, 1.0, 1.0])
    return image, affine


def _scenario(spec: dict[str, Any]) -> dict[str, Any]:
    """One scenario, run in a fresh process: pre-segment its volumes, optionally time the encoder."""
    import nibabel as nib
    import torch

    from ml_worker.inference.native import Native3DTask
    from ml_worker.models.native3d import Native3DConfig

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["checkpoint"]:
        task = Native3DTask.from_checkpoint(Path(spec["checkpoint"]), device=spec["device"])
    else:
        config = Native3DConfig(
            num_classes=2, class_names=("class_1", "class_2"), roi_size=spec["roi"], spacing=spec["spacing"]
        )
        torch.manual_seed(0)
        task = Native3DTask(network=config.build(), config=config, device=spec["device"])

    def volumes():
        if spec["kind"] == "synthetic":
            yield synthetic_ct(tuple(spec["shape"]))
        else:
            for path in spec["paths"]:
                img = nib.load(path)
                yield np.asarray(img.dataobj), img.affine

    seconds, shapes, parts, sliding = [], [], [], []
    encode = None
    for image, affine in volumes():
        began = time.perf_counter()
        prediction = task(image=image, affine=affine, modality=spec["modality"])
        seconds.append(time.perf_counter() - began)
        shapes.append(list(image.shape))
        parts.append({k: round(v, 3) for k, v in prediction.latencies.items()})
        sliding.append(prediction.sliding_window)
        if spec["encode_slices"] and encode is None:
            encode = _time_encoder(image, spec)
    out = {
        "name": spec["name"],
        "volumes": len(seconds),
        "shape": shapes[0] if len(set(map(tuple, shapes))) == 1 else "varies",
        "device": str(task.device),
        "sliding_window": any(sliding),
        "seconds_per_volume": _percentiles(seconds),
        "volumes_per_s": round(len(seconds) / sum(seconds), 3),
        "latency_parts_first": parts[0],
        "peak_rss_mb": _peak_rss_mb(),
    }
    if task.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(task.device) / 2**20, 1)
    if encode is not None:
        out["litemedsam_embeddings"] = encode
    return out


def _time_encoder(image: np.ndarray, spec: dict[str, Any]) -> dict[str, Any]:
    from ml_worker.inference.embeddings import encode_volume
    from ml_worker.models.checkpoints import load_litemedsam, select_device
    from ml_worker.models.encoders import build_encoder

    device = select_device(spec["device"])
    model = load_litemedsam(device=device)
    n = min(spec["encode_slices"], image.shape[2])
    began = time.perf_counter()
    encode_volume(model, image[:, :, :n], encoder=build_encoder(model))
    per_slice = (time.perf_counter() - began) / n
    return {
        "slices_timed": n,
        "seconds_per_slice": round(per_slice, 3),
        "seconds_per_volume_extrapolated": round(per_slice * image.shape[2], 1),
        "embedding_mb_per_volume": round(image.shape[2] * 256 * 64 * 64 * 2 / 2**20, 1),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "mean": round(float(np.mean(values)), 3),
    }


def _in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_scenario, (spec,))


@command(
    "bench-presegment",
    help="Pre-segmentation throughput (volumes/s), seconds per volume and peak memory of the native 3D "
    "net on hippocampus volumes and a CT-sized synthetic volume, as JSON",
    arguments=[
        arg("--images", type=Path, default=None, help="folder of NIfTI volumes (e.g. hippocampus imagesTr)"),
        arg("--limit", type=int, default=20, help="volumes taken from --images (default 20)"),
        arg("--synthetic", type=_shape, default=(512, 512, 300), help="synthetic CT (default 512x512x300)"),
        arg("--no-synthetic", action="store_true", help="skip the synthetic CT"),
        arg("--checkpoint", type=Path, default=None, help="native 3D weights (default: an untrained net)"),
        arg("--roi", type=_shape, default=(96, 96, 64), help="untrained net: ROI (default 96x96x64)"),
        arg("--spacing", type=float, default=1.5, help="untrained net: isotropic mm (default 1.5)"),
        arg("--encode-slices", type=int, default=0, help="also time the LiteMedSAM encoder on N slices"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
        arg("--out", type=Path, default=None, help="also write the JSON here"),
    ],
)
def bench_presegment_command(args: argparse.Namespace) -> int:
    base = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "device": args.device,
        "threads": args.threads,
        "encode_slices": args.encode_slices,
        "roi": list(args.roi),
        "spacing": [args.spacing] * 3,
    }
    specs = []
    if args.images is not None:
        paths = sorted(str(p) for p in args.images.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not paths:
            print(f"error: no NIfTI volumes in {args.images}", file=sys.stderr)
            return 2
        specs.append({**base, "name": args.images.name, "kind": "files", "paths": paths[: args.limit],
                      "modality": "MR"})  # fmt: skip
    if not args.no_synthetic:
        specs.append({**base, "name": "synthetic_ct", "kind": "synthetic", "shape": list(args.synthetic),
                      "modality": "CT"})  # fmt: skip
    if not specs:
        print("error: nothing to run: give --images, or drop --no-synthetic", file=sys.stderr)
        return 2
    model = base["checkpoint"] or f"untrained (throughput only), roi {args.roi}, spacing {args.spacing} mm"
    report = {"model": model, "scenarios": []}
    for spec in specs:
        report["scenarios"].append(_in_fresh_process(spec))
        print(json.dumps(report["scenarios"][-1]), file=sys.stderr)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


def resample_case(image: Path, label: Path, shape: tuple[int, int, int], folder: Path) -> str:
    """Write `image` (linear) and `label` (nearest) resampled to `shape` under folder/{images,labels}."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    img, lab = nib.load(str(image)), nib.load(str(label))
    source = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None, None]
    labels = torch.from_numpy(np.rint(np.asarray(lab.dataobj)).astype(np.float32))[None, None]
    big = F.interpolate(source, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    big_labels = F.interpolate(labels, size=shape, mode="nearest")[0, 0].numpy().astype(np.uint8)
    # align_corners: the first and last voxel centres stay where they were
    scale = (np.array(img.shape, dtype=float) - 1) / (np.array(shape, dtype=float) - 1)
    affine = img.affine @ np.diag([*scale, 1.0])
    name = f"{image.name.split('.')[0]}_{'x'.join(map(str, shape))}"
    for sub, array in (("images", big), ("labels", big_labels)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        # .nii, not .nii.gz: gzip stamps the time, and the embedding cache is keyed by the file's hash
        nib.save(nib.Nifti1Image(array, affine), str(folder / sub / f"{name}.nii"))
    return name


@command(
    "bench-click",
    help="Click latency of LiteMedSAM 3D on cached embeddings (or of a native 3D net, --checkpoint) for a "
    "real case resampled to a larger grid (default 256x256x128), as JSON",
    arguments=[
        arg("--image", type=Path, required=True, help="a NIfTI image (e.g. a hippocampus case)"),
        arg("--label", type=Path, required=True, help="its label map"),
        arg("--shape", type=_shape, default=(256, 256, 128), help="grid to resample to (256x256x128)"),
        arg("--clicks", type=int, default=5, help="corrective clicks after the box (default 5)"),
        arg(
            "--checkpoint",
            type=Path,
            default=None,
            help="time the native 3D net of this weights file instead of LiteMedSAM",
        ),
        arg("--cache-dir", type=Path, default=None, help="keep the embeddings here across runs"),
        arg("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"),
        arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
        arg("--out", type=Path, default=None, help="also write the JSON here"),
    ],
)
def bench_click_command(args: argparse.Namespace) -> int:
    from ml_worker.cli import main

    with tempfile.TemporaryDirectory(prefix="bench-click-") as tmp:
        folder = Path(tmp)
        name = resample_case(args.image, args.label, args.shape, folder)
        out = args.out or folder / "report.json"
        argv = ["interactive-eval", "--images", str(folder / "images"), "--labels", str(folder / "labels"),
                "--clicks", str(args.clicks), "--out", str(out)]  # fmt: skip
        if args.checkpoint is not None:
            argv += ["--model", "native3d", "--checkpoint", str(args.checkpoint)]
        for flag, value in (("--cache-dir", args.cache_dir), ("--device", args.device),
                            ("--threads", args.threads)):  # fmt: skip
            if value is not None:
                argv += [flag, str(value)]
        status = main(argv)
        if status != 0 or getattr(args, "checkpoint", None) is not None:
            return status
        # beside the cached figures: the first box on a never-seen volume, encoded on demand
        from ml_worker.experiments.bench_encoder import cold_start

        resampled = (folder / "images" / f"{name}.nii", folder / "labels" / f"{name}.nii")
        cold = [cold_start(*pair, device=args.device) for pair in ((args.image, args.label), resampled)]
        report = json.loads(out.read_text())
        report["cold_start"] = cold
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({"cold_start": cold, "cached_latency_s": report["summary"]["latency_s"]}, indent=1))
        return 0
