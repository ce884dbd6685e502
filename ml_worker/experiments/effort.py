"""Effort simulation: a simulated annotation team works through a pool with the real pieces, and we count
what each case costs it as the loop learns (``python -m ml_worker effort-simulate``).

Split (shared by every setting and seed): the cases are ordered by a hash of their ids
(:func:`~ml_worker.adaptation.splits.order_key`, salt ``effort-simulate``); the first ``validation``
are the locked validation split the gate scores on (reference labels, not counted as effort), the
next ``pool_size`` (default: the rest) are the pool the team annotates.

Settings:

- ``manual``: no model; brush strokes from an empty mask.
- ``frozen``: the foundation model, never adapted: a LiteMedSAM box per structure, then clicks, then strokes.
- ``loop-random``: the learning loop, cases in a seeded random order (the same order ``manual`` and
  ``frozen`` take, so their curves line up case by case).
- ``loop-best``: the learning loop, cases in the order of the selection strategy (default ``hybrid``;
  diversity at cold start), re-ranked after every round.

The loop: a case starts from the active native model's pre-segmentation (empty before the first
model); the annotator corrects it with the interactive model (the active native net; before the first
model, LiteMedSAM as the platform routes a cold start, ``cold_start``); the approved mask (the
annotator's, not the reference) is written and trains the next rounds. Every ``round_every`` approvals
a round runs :func:`~ml_worker.adaptation.round.adaptation_round` on all approved cases (the first model
trains ``full`` from a seeded :func:`~ml_worker.adaptation.round.initial_checkpoint`, later rounds adapt
the active model with ``method``), and its gate decides whether the candidate becomes active.

The simulated annotator, per structure (:func:`annotate_structure`): a box where the structure has
nothing to start from and a model takes boxes; corrective clicks
(:func:`~ml_worker.inference.simulate.next_click`, the click of ``interactive-eval``) while they
help: a click that does not raise Dice is undone and ends the clicking; then brush strokes
(:func:`next_stroke`: a disc of ``stroke_radius`` voxels on one slice, on the largest remaining
error) until Dice >= ``target`` or a cap. Counted per case: boxes, clicks, strokes, voxels painted,
model seconds, and the estimated annotator time
(:func:`ml_worker.effort.estimated_seconds`: per-action costs, one review per case).

Resumable: each (setting, seed) keeps a state file, written atomically after every case and round;
a rerun continues where it stopped and gives the same records (model seconds aside). Settings may run
as parallel processes on one ``out`` folder; each rewrites ``results.json`` and the PNG from every
state file present.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_worker.effort import COST_SOURCES, DEFAULT_COSTS, ActionCosts, estimated_seconds
from ml_worker.inference.eval import Case, dice
from ml_worker.inference.prompts import Box3D, Click
from ml_worker.inference.simulate import jittered_box, label_components, next_click, region_centre

__all__ = [
    "SETTINGS",
    "AnnotatorConfig",
    "EffortConfig",
    "Stroke",
    "annotate_structure",
    "next_stroke",
    "run_setting",
    "split_cases",
    "write_results",
]

SETTINGS = ("manual", "frozen", "loop-random", "loop-best")
RESULTS_NAME = "results.json"
CURVE_NAME = "effort.png"
STATE_FORMAT = "ml_worker.effort-state/1"


# ---- the simulated annotator ---------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorConfig:
    """How the simulated annotator works on one structure.

    target: Dice against the reference at which it stops (per structure).
    max_clicks, max_strokes: caps per structure.
    stroke_radius: radius (voxels, in the slice plane) of the brush disc.
    axis: the slice axis strokes are painted on (the viewer's slice direction).
    min_gain: a click "helped" when Dice rose by more than this.
    jitter: box sides move outwards by up to this many voxels (see `jittered_box`).
    """

    target: float = 0.90
    max_clicks: int = 10
    max_strokes: int = 400
    stroke_radius: int = 3
    axis: int = 2
    min_gain: float = 1e-4
    jitter: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1 or self.max_clicks < 0 or self.max_strokes < 0 or self.stroke_radius < 0:
            raise ValueError("target must be in (0, 1], caps and stroke_radius >= 0")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis}")


@dataclass(frozen=True)
class Stroke:
    """One brush stroke: `voxels` (bool, the volume's shape, on one slice) set to `positive`."""

    slice_index: int
    centre: tuple[int, int, int]
    positive: bool
    voxels: np.ndarray = field(repr=False)


def _disc(shape: Sequence[int], centre: Sequence[int], radius: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius * radius


def next_stroke(mask: np.ndarray, truth: np.ndarray, *, axis: int, radius: float) -> Stroke | None:
    """The brush stroke a careful annotator paints next: on the largest remaining error.

    The error regions are the 6-connected components of the false negatives and of the false positives
    (3D); the largest by voxel count wins (false negatives on a tie). The stroke goes on the slice
    (along `axis`) where that region is largest, centred on the voxel of the region's cross-section
    farthest from its edge, as a disc of `radius` voxels; it paints (positive: adds, negative: erases)
    the voxels of the disc that are errors of its kind, as a careful annotator stops at the edge.

    Returns:
        The stroke, or None when `mask` equals `truth`.
    """
    mask, truth = np.asarray(mask, dtype=bool), np.asarray(truth, dtype=bool)
    if mask.shape != truth.shape:
        raise ValueError(f"mask {mask.shape} and truth {truth.shape} differ in shape")
    best: tuple[int, bool, np.ndarray, np.ndarray] | None = None
    for positive, errors in ((True, truth & ~mask), (False, mask & ~truth)):
        components, n = label_components(errors)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
        largest = int(sizes.argmax())
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), positive, components == largest + 1, errors)
    if best is None:
        return None
    _, positive, region, errors = best
    other = tuple(a for a in range(3) if a != axis)
    per_slice = region.sum(axis=other)
    index = int(per_slice.argmax())
    cross = np.take(region, index, axis=axis)
    centre_2d = region_centre(cross)
    disc_2d = _disc(cross.shape, centre_2d, radius) & np.take(errors, index, axis=axis)
    voxels = np.zeros(mask.shape, dtype=bool)
    where = [slice(None)] * 3
    where[axis] = index
    voxels[tuple(where)] = disc_2d
    centre = list(centre_2d)
    centre.insert(axis, index)
    return Stroke(index, tuple(int(v) for v in centre), positive, voxels)


class Session:
    """What the annotator drives: ``start(box) -> mask`` and ``click(click) -> mask`` (bool arrays),
    as :class:`~ml_worker.inference.sam3d.LiteMedSAM3D` and
    :class:`~ml_worker.inference.native.Native3DSession`."""

    def start(self, box: Box3D) -> np.ndarray: ...

    def click(self, click: Click) -> np.ndarray: ...


def annotate_structure(
    truth: np.ndarray,
    *,
    label: int,
    start: np.ndarray | None,
    session: Session | None,
    box: bool,
    config: AnnotatorConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Correct one structure until Dice >= ``config.target`` (or the caps); see the module docstring.

    Args:
        truth: bool reference of the structure.
        start: its mask before the annotator (the pre-segmentation); None: empty.
        session: the interactive model on this structure (None: strokes only).
        box: draw a box first (``session.start``); else clicks edit `start` directly.
        rng: draws the box's jitter.

    Returns:
        (the approved bool mask, a record: dice_start, dice_model (after box and clicks), dice, boxes,
        clicks, clicks_kept, strokes, voxels_painted, model_seconds, reached).
    """
    truth = np.asarray(truth, dtype=bool)
    mask = np.zeros(truth.shape, dtype=bool) if start is None else np.array(start, dtype=bool)
    score = dice(mask, truth)
    record: dict[str, Any] = {"label": int(label), "dice_start": round(score, 4)}
    boxes = clicks = kept = strokes = painted = 0
    model_seconds = 0.0
    if session is not None and score < config.target and truth.any():
        if box:
            began = time.perf_counter()
            mask = np.asarray(session.start(jittered_box(truth, label=label, rng=rng, jitter=config.jitter)))
            model_seconds += time.perf_counter() - began
            boxes, score = 1, dice(mask, truth)
        while score < config.target and clicks < config.max_clicks:
            click = next_click(mask, truth, label=label)
            if click is None:
                break
            began = time.perf_counter()
            answer = np.asarray(session.click(click), dtype=bool)
            model_seconds += time.perf_counter() - began
            clicks += 1
            new_score = dice(answer, truth)
            if new_score <= score + config.min_gain:
                break  # it did not help: undone, and the annotator turns to the brush
            mask, score, kept = answer.copy(), new_score, kept + 1
    record["dice_model"] = round(score, 4)
    while score < config.target and strokes < config.max_strokes:
        stroke = next_stroke(mask, truth, axis=config.axis, radius=config.stroke_radius)
        if stroke is None:
            break
        mask[stroke.voxels] = stroke.positive
        strokes += 1
        painted += int(stroke.voxels.sum())
        score = dice(mask, truth)
    record.update(
        dice=round(score, 4),
        boxes=boxes,
        clicks=clicks,
        clicks_kept=kept,
        strokes=strokes,
        voxels_painted=painted,
        model_seconds=round(model_seconds, 4),
        reached=bool(score >= config.target),
    )
    return mask, record


# ---- runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffortConfig:
    """A simulation's settings (recorded in results.json and every state file).

    seeds: one run per seed and setting; a seed fixes the random order, the box jitter, the first
        model's initialisation and the training draws.
    pool_size: cases in the pool (None: every case outside the validation split).
    validation: cases in the locked validation split the gate scores on (>= 5 for a paired test).
    round_every: approvals between rounds.
    strategy: the selection strategy of ``loop-best``.
    first_epochs, first_steps: the first model's training (method ``full``); epochs, steps: later
        rounds (method ``method``); batch_size, lr: both.
    init_filters, roi_size, spacing: the native net (the platform's default network).
    cold_start: the interactive model before the first native model: ``litemedsam`` or ``none``.
    floor: the least validation Dice the first model needs to become active (the gate's floor;
        the platform's LearningPolicy default 0.5).
    """

    seeds: tuple[int, ...] = (0,)
    pool_size: int | None = None
    validation: int = 5
    round_every: int = 10
    strategy: str = "hybrid"
    method: str = "lora_conv"
    first_epochs: int = 4
    first_steps: int = 25
    epochs: int = 2
    steps: int = 25
    batch_size: int = 2
    lr: float = 2e-3
    init_filters: int = 8
    roi_size: tuple[int, int, int] = (48, 64, 48)
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    modality: str = "MR"
    cold_start: str = "litemedsam"
    floor: float = 0.5
    sam_axis: int = 2
    encoder: str = "auto"
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    costs: ActionCosts = DEFAULT_COSTS

    def __post_init__(self) -> None:
        if not self.seeds or self.validation < 1 or self.round_every < 1:
            raise ValueError("give at least one seed; validation and round_every must be >= 1")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.cold_start not in ("litemedsam", "none"):
            raise ValueError(f"cold_start must be 'litemedsam' or 'none', got {self.cold_start!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        return out


def split_cases(cases: Sequence[Case], config: EffortConfig) -> tuple[list[Case], list[Case]]:
    """(validation, pool): the fixed hash split of the module docstring.

    Raises:
        ValueError: too few cases for the validation split and a pool.
    """
    from ml_worker.adaptation.splits import order_key

    order = sorted(cases, key=lambda c: order_key(c.name, "effort-simulate"))
    if len(order) < config.validation + 1:
        raise ValueError(
            f"{len(order)} cases are too few for {config.validation} validation cases and a pool"
        )
    validation = order[: config.validation]
    pool = order[config.validation :]
    if config.pool_size is not None:
        if config.pool_size > len(pool):
            raise ValueError(
                f"--pool {config.pool_size} is more than the {len(pool)} cases outside validation"
            )
        pool = pool[: config.pool_size]
    return validation, pool


def _split_id(validation: Sequence[Case], pool: Sequence[Case]) -> str:
    text = json.dumps([[c.name for c in validation], [c.name for c in pool]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def random_order(pool: Sequence[Case], seed: int) -> list[str]:
    """The pool in the seed's random order (the same for ``manual``, ``frozen`` and ``loop-random``)."""
    names = sorted(c.name for c in pool)
    rng = np.random.default_rng([seed, 0xEF0])
    return [names[i] for i in rng.permutation(len(names))]


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as JSON at `path`, never half written: a run stopped at any moment leaves the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    os.replace(tmp, path)


def state_path(out: Path, setting: str, seed: int) -> Path:
    return Path(out) / "state" / f"{setting}-seed{seed}.json"


class _Models:
    """The models a run uses, built on first use: LiteMedSAM (+ encoder, embeddings cache) and the
    active native net."""

    def __init__(self, config: EffortConfig, out: Path, device: str | None) -> None:
        self.config, self.out, self.device = config, out, device
        self._sam: tuple[Any, Callable] | None = None
        self._native: tuple[str, Any] | None = None

    def sam_sessions(self) -> Callable:
        if self._sam is None:
            from ml_worker.inference.embeddings import EmbeddingCache
            from ml_worker.inference.eval import EvalConfig, litemedsam_sessions
            from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, load_litemedsam, select_device
            from ml_worker.models.encoders import build_encoder

            device = select_device(self.device)
            model = load_litemedsam(device=device)
            encoder = build_encoder(model, self.config.encoder, weights_id=LITEMEDSAM_SHA256)
            open_case = litemedsam_sessions(
                model=model,
                encoder=encoder,
                model_id=f"litemedsam/{LITEMEDSAM_SHA256[:16]}",
                config=EvalConfig(axis=self.config.sam_axis, jitter=self.config.annotator.jitter),
                cache=EmbeddingCache(max_bytes=1 << 30, directory=self.out / "embeddings"),
                device=device,
            )
            self._sam = (model, open_case)
        return self._sam[1]

    def native(self, weights: str) -> Any:
        from ml_worker.inference.native import Native3DTask

        if self._native is None or self._native[0] != weights:
            self._native = (weights, Native3DTask.from_checkpoint(Path(weights), device=self.device))
        return self._native[1]


def _load(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ml_worker.io.volume import load_volume

    image, affine = load_volume(case.image)
    labels = np.rint(load_volume(case.label)[0]).astype(np.int64)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"{case.name}: image {image.shape} and label {labels.shape} must be 3D of one shape")
    return image, labels, affine


def annotate_case(
    case: Case,
    *,
    setting: str,
    seed: int,
    values: Sequence[int],
    active: str | None,
    models: _Models,
    config: EffortConfig,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One case of one setting: pre-segmentation, the annotator on each structure, the costs.

    Returns (the approved label map, the case's record)."""
    from ml_worker.inference.native import Native3DSession

    image, labels, affine = _load(case)
    approved = np.zeros(labels.shape, dtype=np.uint8)
    preseg = None
    model_seconds = encode_seconds = 0.0
    open_sam = None
    if setting.startswith("loop") and active is not None:
        task = models.native(active)
        began = time.perf_counter()
        preseg = task(image=image, affine=affine, modality=config.modality).labels
        model_seconds += time.perf_counter() - began
    elif setting == "frozen" or (setting.startswith("loop") and config.cold_start == "litemedsam"):
        make, encode_s = models.sam_sessions()(case, image, affine)
        open_sam, encode_seconds = make, encode_s or 0.0
    structures = []
    for value in values:
        truth = labels == value
        start = None if preseg is None else preseg == value
        session, box = None, False
        if preseg is not None:
            session = Native3DSession(
                models.native(active),
                image=image,
                affine=affine,
                modality=config.modality,
                label=value,
                mask=start,
            )
            box = not start.any()  # nothing to correct: the annotator draws a box first
        elif open_sam is not None:
            session, box = open_sam(value), True
        rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), value])
        mask, record = annotate_structure(
            truth, label=value, start=start, session=session, box=box, config=config.annotator, rng=rng
        )
        approved[mask] = value
        structures.append(record)
    totals = {k: sum(s[k] for s in structures) for k in ("boxes", "clicks", "strokes", "voxels_painted")}
    model_seconds += sum(s["model_seconds"] for s in structures)
    return approved, {
        "case": case.name,
        "model": None if active is None or not setting.startswith("loop") else Path(active).parent.name,
        **totals,
        "model_seconds": round(model_seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "annotator_seconds": round(
            estimated_seconds(
                clicks=totals["clicks"], strokes=totals["strokes"], boxes=totals["boxes"], costs=config.costs
            ),
            3,
        ),
        "structures": structures,
    }


def _rank(
    state: dict[str, Any],
    pool: Sequence[Case],
    approved_ids: Sequence[str],
    config: EffortConfig,
    device: str | None,
) -> list[str]:
    """The remaining pool in the strategy's order, by the active model (diversity without one)."""
    from ml_worker.adaptation.round import PoolScorer

    by_name = {c.name: c for c in pool}
    remaining = [n for n in state["order"] if n not in set(state["done"])]
    scorer = PoolScorer(
        None if state["active"] is None else Path(state["active"]), modality=config.modality, device=device
    )
    items = [scorer.item(n, by_name[n].image).item for n in remaining]
    labelled = [PoolScorer.embedded(n, by_name[n].image) for n in approved_ids]
    ranked = scorer.rank(
        items, strategy=config.strategy, labelled=labelled, seed=state["seed"] + len(state["rounds"])
    )
    return [r.volume_id for r in ranked]


def _round(
    state: dict[str, Any],
    *,
    out: Path,
    values: Sequence[int],
    names: dict[int, str],
    validation: Sequence[Case],
    config: EffortConfig,
    device: str | None,
    progress: Callable | None,
) -> dict[str, Any]:
    from ml_worker.adaptation.round import GateOptions, adaptation_round, initial_checkpoint
    from ml_worker.adaptation.train import TrainCase, TrainConfig

    run_dir = out / "runs" / f"{state['setting']}-seed{state['seed']}"
    number = len(state["rounds"]) + 1
    first = state["active"] is None
    if first:
        base = run_dir / "init.pt"
        if not base.is_file():
            initial_checkpoint(
                names,
                base,
                init_filters=config.init_filters,
                roi_size=config.roi_size,
                spacing=config.spacing,
                seed=state["seed"],
            )
    else:
        base = Path(state["active"])
    train = TrainConfig(
        epochs=config.first_epochs if first else config.epochs,
        steps_per_epoch=config.first_steps if first else config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=state["seed"] * 1000 + number,
        modality=config.modality,
        validate_every=config.first_epochs if first else config.epochs,
    )
    cases = [
        TrainCase(
            image=Path(a["image"]),
            label=run_dir / "approved" / f"{a['case']}.nii.gz",
            labelled=values,
            case_id=a["case"],
        )
        for a in state["approved"]
    ]
    began = time.perf_counter()
    result = adaptation_round(
        base=base,
        method="full" if first else config.method,
        cases=cases,
        validation=[
            TrainCase(image=c.image, label=c.label, labelled=values, case_id=c.name) for c in validation
        ],
        train=train,
        out_dir=run_dir / f"round{number:02d}",
        active=None if first else Path(state["active"]),
        snapshot_ids=[c.case_id for c in cases],
        options=GateOptions(floor=config.floor),
        progress=progress,
    )
    return {
        "round": number,
        "after_cases": len(state["done"]),
        "method": result.method,
        "promoted": bool(result.promotable),
        "reason": result.reason,
        "validation_dice": None if result.validation_dice is None else round(result.validation_dice, 4),
        "weights": str(result.weights),
        "seconds": round(time.perf_counter() - began, 2),
    }


def run_setting(
    setting: str,
    seed: int,
    *,
    cases: Sequence[Case],
    out: Path,
    config: EffortConfig,
    names: dict[int, str],
    device: str | None = None,
    on_case: Callable[[dict[str, Any], int, int], None] | None = None,
    round_progress: Callable | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) one setting with one seed; returns its state (records, rounds, order).

    Args:
        cases: every labelled case (the split is taken from them, see :func:`split_cases`).
        names: label value -> name of the structures.
        on_case: called after each case with (record, cases done, pool size): progress.
        stop_after: stop after this many cases of this call (tests: an interruption).

    Raises:
        ValueError: an unknown setting, or a state file of another split or configuration.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    out = Path(out)
    validation, pool = split_cases(cases, config)
    by_name = {c.name: c for c in pool}
    values = sorted(names)
    split = _split_id(validation, pool)
    path = state_path(out, setting, seed)
    # seeds apart: processes running other seeds (or settings) of one study share the folder
    identity = {"split": split, "config": {k: v for k, v in config.to_dict().items() if k != "seeds"}}
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("format") != STATE_FORMAT or state.get("identity") != json.loads(json.dumps(identity)):
            raise ValueError(f"{path} belongs to another split or configuration: give another --out")
    else:
        state = {
            "format": STATE_FORMAT,
            "identity": identity,
            "setting": setting,
            "seed": seed,
            "validation": [c.name for c in validation],
            "pool": sorted(by_name),
            "order": random_order(pool, seed),
            "done": [],
            "records": [],
            "rounds": [],
            "approved": [],
            "active": None,
            "since_round": 0,
            "pending_round": False,
            "ranked": False,
        }
        write_json_atomic(path, state)
    loop = setting.startswith("loop")
    run_dir = out / "runs" / f"{setting}-seed{seed}"
    models = _Models(config, out, device)
    processed = 0
    while True:
        if loop and state["pending_round"]:
            summary = _round(
                state,
                out=out,
                values=values,
                names=names,
                validation=validation,
                config=config,
                device=device,
                progress=round_progress,
            )
            state["rounds"].append(summary)
            if summary["promoted"]:
                state["active"] = summary["weights"]
            state["pending_round"], state["ranked"] = False, False
            write_json_atomic(path, state)
        if setting == "loop-best" and not state["ranked"]:
            done = state["done"]
            state["order"] = done + _rank(state, pool, done, config, device)
            state["ranked"] = True
            write_json_atomic(path, state)
        remaining = [n for n in state["order"] if n not in set(state["done"])]
        if not remaining or (stop_after is not None and processed >= stop_after):
            break
        case = by_name[remaining[0]]
        approved, record = annotate_case(
            case,
            setting=setting,
            seed=seed,
            values=values,
            active=state["active"],
            models=models,
            config=config,
        )
        record["index"] = len(state["done"])
        if loop:
            import nibabel as nib

            target = run_dir / "approved" / f"{case.name}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            affine = nib.load(str(case.label)).affine
            tmp = target.with_name(f".{target.name}")
            nib.save(nib.Nifti1Image(approved, affine), str(tmp))
            os.replace(tmp, target)
            state["approved"].append({"case": case.name, "image": str(case.image)})
            state["since_round"] += 1
            if state["since_round"] >= config.round_every and len(remaining) > 1:
                state["pending_round"], state["since_round"] = True, 0
        state["done"].append(case.name)
        state["records"].append(record)
        write_json_atomic(path, state)
        processed += 1
        if on_case is not None:
            on_case(record, len(state["done"]), len(pool))
    return state


# ---- results -------------------------------------------------------------------------------------


def _series(states: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    n = min(len(s["records"]) for s in states)
    return np.array([[r[key] for r in s["records"][:n]] for s in states], dtype=np.float64)


def summarise(states: Sequence[dict[str, Any]], *, last: int = 50) -> dict[str, Any]:
    """Per setting: cases done per seed, mean effort per case and in total (mean over seeds), the
    curve (mean, min, max over seeds per case index), and the ratios the issue's targets name."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for state in states:
        by_setting.setdefault(state["setting"], []).append(state)
    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        runs = [s for s in by_setting.get(setting, []) if s["records"]]
        if not runs:
            continue
        time_s = _series(runs, "annotator_seconds")
        complete = all(len(s["done"]) == len(s["pool"]) for s in runs)
        settings[setting] = {
            "seeds": [s["seed"] for s in runs],
            "cases": int(time_s.shape[1]),
            "complete": complete,
            "annotator_seconds_per_case": round(float(time_s.mean()), 2),
            "annotator_seconds_total": round(float(time_s.sum(axis=1).mean()), 1),
            "annotator_seconds_last": round(float(time_s[:, -last:].mean()), 2),
            **{
                f"{k}_per_case": round(float(_series(runs, k).mean()), 3)
                for k in ("boxes", "clicks", "strokes", "voxels_painted", "model_seconds")
            },
            "curve": {
                "mean": [round(float(v), 2) for v in time_s.mean(axis=0)],
                "min": [round(float(v), 2) for v in time_s.min(axis=0)],
                "max": [round(float(v), 2) for v in time_s.max(axis=0)],
            },
            "rounds": {str(s["seed"]): s["rounds"] for s in runs if s["rounds"]},
        }
    ratios: dict[str, float | None] = {}

    def ratio(a: str, b: str, key: str = "annotator_seconds_total") -> float | None:
        if a in settings and b in settings and settings[a]["cases"] == settings[b]["cases"]:
            return round(settings[a][key] / max(settings[b][key], 1e-9), 4)
        return None

    ratios["loop_best_over_manual"] = ratio("loop-best", "manual")
    ratios["loop_best_over_frozen"] = ratio("loop-best", "frozen")
    ratios["loop_best_over_random"] = ratio("loop-best", "loop-random")
    if "loop-best" in settings and "manual" in settings:
        ratios["loop_best_last_over_manual_case"] = round(
            settings["loop-best"]["annotator_seconds_last"]
            / max(settings["manual"]["annotator_seconds_per_case"], 1e-9),
            4,
        )
    return {"settings": settings, "ratios": ratios, "last": last}


def write_results(out: Path, *, config: EffortConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json and the PNG from every state file under `out` (any process may call it)."""
    out = Path(out)
    states = [json.loads(p.read_text()) for p in sorted((out / "state").glob("*.json"))]
    pool = len(states[0]["pool"]) if states else 0
    summary = summarise(states, last=min(50, max(1, pool // 4)))
    results = {
        "protocol": {
            "settings": list(SETTINGS),
            "annotator": asdict(config.annotator),
            "costs": config.costs.as_dict(),
            "cost_sources": dict(COST_SOURCES),
            "annotator_seconds": "boxes*box + clicks*click + strokes*stroke + review (model waits apart)",
            "split": states[0]["identity"]["split"] if states else None,
            "validation": states[0]["validation"] if states else [],
        },
        "config": config.to_dict(),
        **summary,
        **(extra or {}),
        "runs": [
            {k: s[k] for k in ("setting", "seed", "order", "done", "records", "rounds")} for s in states
        ],
    }
    write_json_atomic(out / RESULTS_NAME, results)
    if summary["settings"]:
        _plot(summary["settings"], out / CURVE_NAME)
    return results


def _plot(settings: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (per_case, total) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, data in settings.items():
        mean = np.asarray(data["curve"]["mean"]) / 60
        x = np.arange(1, len(mean) + 1)
        (line,) = per_case.plot(x, mean, label=f"{name} ({len(data['seeds'])} seed(s))")
        per_case.fill_between(
            x,
            np.asarray(data["curve"]["min"]) / 60,
            np.asarray(data["curve"]["max"]) / 60,
            alpha=0.2,
            color=line.get_color(),
        )
        total.plot(x, np.cumsum(mean), label=name, color=line.get_color())
    per_case.set(xlabel="cases done", ylabel="estimated annotator minutes per case", title="Effort per case")
    total.set(xlabel="cases done", ylabel="estimated annotator minutes, cumulative", title="Total effort")
    per_case.legend(fontsize=8)
    total.legend(fontsize=8)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}")
    figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
