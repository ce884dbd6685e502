"""Interactive evaluation: a simulated annotator gives a 3D box, then corrective clicks.

The protocol (as in recent interactive-segmentation challenges), per case and per class:

1. Box: the class's 3D extent in the label map, each side moved by up to ``jitter`` voxels with a
   seeded generator, never cutting the structure (see `simulate.jittered_box`). Dice after it is
   step 0.
2. Up to ``n_clicks`` corrective clicks, each at the centre (farthest voxel from the boundary) of
   the largest 6-connected error region: a false-negative region gives a positive click, a
   false-positive one a negative click (`simulate.next_click`). Dice after click c is step c. Once
   the prediction is perfect no click is given and the last Dice carries over.
3. Dice-AUC: the area under Dice over steps 0..n_clicks by the trapezoid rule, divided by
   n_clicks, so it lies in [0, 1] (the mean Dice with the first and last step weighted one half).

Latency: every box and click is timed with the volume's embeddings already cached (the interactive
case); the encoder's one-time cost per volume is reported apart, and with it the first interaction
of a volume whose embeddings were not cached (encode + box).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import torch

from ml_worker.inference.embeddings import EmbeddingCache, VolumeEmbeddings, cache_key, encode_volume
from ml_worker.inference.prompts import Box3D, Click
from ml_worker.inference.sam3d import LiteMedSAM3D, PropagationConfig
from ml_worker.inference.simulate import jittered_box, next_click
from ml_worker.io.volume import voxel_spacing
from ml_worker.models.checkpoints import file_sha256
from ml_worker.models.encoders import SliceEncoder

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NOC_THRESHOLDS = (85, 90)  # NoC@85, NoC@90: Dice in percent
LOWERED_TOLERANCE = 1e-4  # a click "lowered" Dice when it fell by more than this


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the protocol (recorded in the output)."""

    n_clicks: int = 5
    jitter: int = 2
    axis: int = 2
    seed: int = 0
    propagation: PropagationConfig = field(default_factory=PropagationConfig)


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool arrays; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


def dice_auc(values: Sequence[float]) -> float:
    """Normalised trapezoid area under Dice over steps 0..n: in [0, 1]; one step gives that Dice."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return float(v[0])
    return float(((v[:-1] + v[1:]) / 2).sum() / (v.size - 1))


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p95, mean and count of latencies in seconds (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    return {
        "p50": round(float(np.percentile(v, 50)), 4),
        "p95": round(float(np.percentile(v, 95)), 4),
        "mean": round(float(v.mean()), 4),
        "n": int(v.size),
    }


def _stem(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_cases(images: Path, labels: Path) -> list[Case]:
    """Image/label pairs by file name (NIfTI), sorted by name.

    Raises:
        FileNotFoundError: a folder is missing, holds no NIfTI files, or an image has no label.
    """
    for folder in (images, labels):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder at {folder}")
    image_files = sorted(
        p for p in images.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
    )
    if not image_files:
        raise FileNotFoundError(f"no NIfTI images (.nii, .nii.gz) in {images}")
    by_stem = {_stem(p): p for p in labels.iterdir() if p.name.endswith(NIFTI_SUFFIXES)}
    missing = [_stem(p) for p in image_files if _stem(p) not in by_stem]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no label file of the same name in {labels}: "
            f"{', '.join(missing[:5])}"
        )
    return [Case(_stem(p), p, by_stem[_stem(p)]) for p in image_files]


def label_names(labels: Path) -> dict[int, str]:
    """Names of label values from an MSD-style ``dataset.json`` beside the labels folder, if any."""
    for candidate in (labels.parent / "dataset.json", labels / "dataset.json"):
        if candidate.is_file():
            try:
                table = json.loads(candidate.read_text())["labels"]
                return {int(value): str(name) for value, name in table.items()}
            except (KeyError, ValueError, TypeError, AttributeError):
                return {}
    return {}


def _rng(seed: int, case: str, label: int) -> np.random.Generator:
    """A generator per (seed, case, label): results do not depend on which other cases run."""
    return np.random.default_rng([seed, zlib.crc32(case.encode()), label])


def evaluate_structure(
    session: Session,
    truth: np.ndarray,
    *,
    label: int,
    rng: np.random.Generator,
    config: EvalConfig,
) -> dict:
    """Box then corrective clicks on one structure; Dice after every step and latencies.

    Args:
        session: a fresh session for `label` on the volume's embeddings.
        truth: bool ``(I, J, K)`` ground truth of the structure.
    """
    box = jittered_box(truth, label=label, rng=rng, jitter=config.jitter)
    prediction = session.start(box)
    scores = [dice(prediction, truth)]
    clicks = []
    for _ in range(config.n_clicks):
        click = next_click(prediction, truth, label=label)
        if click is None:
            scores.append(scores[-1])
            continue
        prediction = session.click(click)
        scores.append(dice(prediction, truth))
        raw = getattr(session, "raw", None)  # the model's own answer, before any click guarantee
        clicks.append(
            {
                "ijk": list(click.ijk),
                "positive": click.positive,
                "dice": round(scores[-1], 4),
                "lowered": scores[-1] < scores[-2] - LOWERED_TOLERANCE,
                "on_side": bool(prediction[click.ijk]) == click.positive,
                "model_on_side": None if raw is None else bool(raw[click.ijk]) == click.positive,
            }
        )
    interactions = session.history
    return {
        "label": label,
        "box": {"lo": list(box.lo), "hi": list(box.hi)},
        "dice": [round(s, 4) for s in scores],
        "auc": round(dice_auc(scores), 4),
        "noc": {str(t): clicks_to_reach(scores, t / 100) for t in NOC_THRESHOLDS},
        "clicks": clicks,
        "latency_s": {
            "box": round(interactions[0].seconds, 4),
            "clicks": [round(i.seconds, 4) for i in interactions[1:]],
        },
        "slices_decoded": {
            "box": interactions[0].slices_decoded,
            "clicks": [i.slices_decoded for i in interactions[1:]],
        },
    }


def clicks_to_reach(scores: Sequence[float], threshold: float) -> int:
    """NoC: corrective clicks after the box until Dice >= `threshold` (0 when the box reaches it); a
    structure that never gets there counts as the cap, ``len(scores) - 1``."""
    for step, value in enumerate(scores):
        if value >= threshold:
            return step
    return len(scores) - 1


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, integer label map, affine), checked to share a shape."""
    nifti = nib.load(str(case.image))
    image = np.asarray(nifti.dataobj)
    labels = np.rint(np.asarray(nib.load(str(case.label)).dataobj)).astype(np.int64)
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"{case.name}: image {image.shape} and label {labels.shape} must be 3D of one shape")
    return image, labels, np.asarray(nifti.affine, dtype=np.float64)


class Session(Protocol):
    """One structure in one volume, driven by a simulated annotator (`LiteMedSAM3D`, `Native3DSession`)."""

    history: list

    def start(self, box: Box3D) -> np.ndarray: ...

    def click(self, click: Click) -> np.ndarray: ...


# (case, image, affine) -> (a new session for a label, seconds spent on the volume ahead, or None)
OpenCase = Callable[[Case, np.ndarray, np.ndarray], tuple[Callable[[int], Session], float | None]]


def litemedsam_sessions(
    *,
    model: torch.nn.Module,
    model_id: str,
    config: EvalConfig,
    cache: EmbeddingCache,
    device: torch.device | str = "cpu",
    on_slices: Callable[[int, int], None] | None = None,
    encoder: SliceEncoder | None = None,
) -> OpenCase:
    """LiteMedSAM 3D sessions over each volume's slice embeddings (encoded once, then cached).

    A cache hit skips the encoder: its time is then not measured (None). `encoder`: the runtime of
    the image encoder (default torch on the model's device).
    """

    def open_case(case: Case, image: np.ndarray, affine: np.ndarray) -> tuple[Callable, float | None]:
        key = cache_key(file_sha256(case.image), model_id, f"axis{config.axis}")
        encode_s = None
        stored = cache.get(key)
        if stored is None:
            began = time.perf_counter()
            array = encode_volume(model, image, axis=config.axis, progress=on_slices, encoder=encoder)
            encode_s = time.perf_counter() - began
            stored = cache.put(key, array)
        embeddings = VolumeEmbeddings(stored, tuple(image.shape), config.axis)
        spacing = voxel_spacing(affine)

        def session(label: int) -> LiteMedSAM3D:
            return LiteMedSAM3D(
                model, embeddings, label=label, config=config.propagation, device=device, spacing=spacing
            )

        return session, encode_s

    return open_case


def interactive_eval(
    *,
    open_case: OpenCase,
    model_id: str,
    cases: Sequence[Case],
    config: EvalConfig,
    classes: Sequence[int] | None = None,
    names: Mapping[int, str] | None = None,
    device: torch.device | str = "cpu",
    on_case: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run the protocol on `cases`; returns the report (per case, per class, and a summary).

    Args:
        open_case: prepares a volume and makes sessions on it (e.g. `litemedsam_sessions`).
        model_id: identifies the model in the report.
        cases: image/label pairs.
        config: the protocol's settings.
        classes: label values to evaluate (default: every non-zero value present in each label map).
        names: label value -> name for the summary (default ``label_<value>``).
        on_case: called after each case with its name and result (progress).
    """
    names = dict(names or {})
    results = []
    for case in cases:
        image, labels, affine = load_case(case)
        make_session, encode_s = open_case(case, image, affine)
        present = sorted(int(v) for v in np.unique(labels) if v != 0)
        wanted = [v for v in present if classes is None or v in classes]
        structures = []
        for label in wanted:
            result = evaluate_structure(
                make_session(label),
                labels == label,
                label=label,
                rng=_rng(config.seed, case.name, label),
                config=config,
            )
            result["name"] = names.get(label, f"label_{label}")
            structures.append(result)
        case_result = {
            "case": case.name,
            "shape": list(image.shape),
            "slices": int(image.shape[config.axis]),
            "encode_s": None if encode_s is None else round(encode_s, 3),
            "classes": structures,
        }
        results.append(case_result)
        if on_case is not None:
            on_case(case.name, case_result)
    return {
        "protocol": {
            "n_clicks": config.n_clicks,
            "jitter": config.jitter,
            "axis": config.axis,
            "seed": config.seed,
            "propagation": asdict(config.propagation),
            "auc": "trapezoid over steps 0..n_clicks, divided by n_clicks",
            "click": "centre (max distance to boundary) of the largest 6-connected FN or FP region",
        },
        "model": model_id,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "summary": summarise(results, n_steps=config.n_clicks + 1),
        "cases": results,
    }


def _share(flags: Sequence[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if len(flags) else None


def summarise(results: Sequence[dict], *, n_steps: int) -> dict:
    """Mean Dice per step and AUC per class, and latency percentiles over all cases."""
    per_class: dict[str, list[dict]] = {}
    for case in results:
        for structure in case["classes"]:
            per_class.setdefault(structure["name"], []).append(structure)
    classes = {}
    for name, items in sorted(per_class.items()):
        curves = np.array([s["dice"] for s in items], dtype=np.float64)
        given = [c for s in items for c in s.get("clicks", [])]
        judged = [c["model_on_side"] for c in given if c.get("model_on_side") is not None]
        classes[name] = {
            "label": items[0]["label"],
            "n": len(items),
            "dice_per_step": [round(float(v), 4) for v in curves.mean(axis=0)],
            "dice_per_step_min": [round(float(v), 4) for v in curves.min(axis=0)],
            "auc": round(float(np.mean([s["auc"] for s in items])), 4),
            **{
                f"noc{t}": {
                    "median": float(np.median([s["noc"][str(t)] for s in items])),
                    "mean": round(float(np.mean([s["noc"][str(t)] for s in items])), 3),
                    "reached": sum(s["dice"][s["noc"][str(t)]] >= t / 100 for s in items),
                }
                for t in NOC_THRESHOLDS
                if all("noc" in s for s in items)
            },
            "clicks": len(given),
            "clicks_lowering_dice": _share([c["lowered"] for c in given]),
            "clicked_voxels_on_clicked_side": _share([c["on_side"] for c in given]),
            "clicked_voxels_on_clicked_side_model_alone": _share(judged),
        }
    structures = [s for case in results for s in case["classes"]]
    encodes = [c for c in results if c["encode_s"] is not None]
    cold = [c["encode_s"] + c["classes"][0]["latency_s"]["box"] for c in encodes if c["classes"]]
    return {
        "n_cases": len(results),
        "n_steps": n_steps,
        "classes": classes,
        "latency_s": {
            "click_cached": percentiles([t for s in structures for t in s["latency_s"]["clicks"]]),
            "box_cached": percentiles([s["latency_s"]["box"] for s in structures]),
            "first_interaction_uncached": percentiles(cold),
            "encode_per_volume": percentiles([c["encode_s"] for c in encodes]),
            "encode_per_slice": percentiles([c["encode_s"] / c["slices"] for c in encodes]),
        },
        "slices_decoded_per_click": percentiles(
            [n for s in structures for n in s["slices_decoded"]["clicks"]]
        ),
    }


def interactive_curve(
    task,
    cases: Sequence,
    *,
    modality: str,
    n_clicks: int = 5,
    jitter: int = 2,
    seed: int = 0,
) -> dict[str, list[float]]:
    """The interactive curve of a native 3D model on labelled cases: per case, Dice after the box and
    after each of `n_clicks` corrective clicks, averaged over the case's labelled classes.

    The protocol of :func:`interactive_eval` (jittered box, click on the largest error), seeded per
    (case, class), so two models are scored on the same boxes: the learning round's gate compares a
    candidate with the active model on it.

    Args:
        task: a :class:`~ml_worker.inference.native.Native3DTask` with guidance channels.
        cases: ``TrainCase``-like objects (``image``, ``label``, ``labelled``, ``case_id``).
    """
    from ml_worker.inference.native import Native3DSession
    from ml_worker.io.volume import load_volume

    config = EvalConfig(n_clicks=n_clicks, jitter=jitter, seed=seed)
    out: dict[str, list[float]] = {}
    for case in cases:
        image, affine = load_volume(case.image)
        labels = np.rint(load_volume(case.label)[0]).astype(np.int64)
        curves = []
        for value in case.labelled:
            truth = labels == value
            if not truth.any() or value not in task.config.label_values:
                continue
            session = Native3DSession(task, image=image, affine=affine, modality=modality, label=value)
            result = evaluate_structure(
                session, truth, label=value, rng=_rng(seed, case.case_id, value), config=config
            )
            curves.append(result["dice"])
        if curves:
            out[case.case_id] = [round(float(v), 4) for v in np.mean(curves, axis=0)]
    return out
