"""One turn of the learning loop as the platform runs it, with no Django: paths in, files and numbers out.

- :func:`initial_checkpoint`: a project's first base, a seeded initialisation of the native 3D net
  (optionally carrying a site's Volume Fusion pretrained weights).
- :func:`adaptation_round`: adapt a base with a PEFT method on approved cases (resumable), score the
  candidate and the active model on the same locked validation cases, let the gate judge, and write the
  adapter and the merged weights the workers serve.
- :func:`sam_adaptation_round`: the same for LiteMedSAM, the interactive foundation model: its mask
  decoder adapted on box-prompted slices of the approved cases, judged against the LiteMedSAM that
  answers now by what annotators get (Dice after a 3D box, then the interactive curve).
- :class:`PoolScorer`: pre-segment and score unlabelled volumes with a model (or, at cold start, embed
  them only), optionally beside a second opinion (LiteMedSAM prompted with the model's boxes) whose
  disagreement is a score and which pre-segments instead where it is better; then rank them with a
  selection strategy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_worker.adaptation.gate import GateError, GateResult, gate
from ml_worker.adaptation.peft import get_method, merge
from ml_worker.adaptation.pretrain import transfer_pretrained
from ml_worker.adaptation.train import (
    ProgressCallback,
    TrainCase,
    TrainConfig,
    Trainer,
    case_means,
    evaluate_task,
)
from ml_worker.adaptation.train_sam import SamTrainConfig, SamTrainer
from ml_worker.inference.embeddings import EmbeddingCache
from ml_worker.inference.eval import dice, interactive_curve
from ml_worker.inference.native import Native3DTask
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import (
    LITEMEDSAM_SHA256,
    CheckpointError,
    load_litemedsam,
    save_atomic,
    select_device,
)
from ml_worker.models.encoders import build_encoder
from ml_worker.models.native3d import Native3DConfig, save_native3d
from ml_worker.uncertainty.embedding import intensity_embedding
from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scorers import ScoringInput, score_volume
from ml_worker.uncertainty.strategies import Ranked, get_strategy

__all__ = [
    "SAM_METHODS",
    "GateOptions",
    "PoolScorer",
    "RoundResult",
    "ScoredVolume",
    "adaptation_round",
    "initial_checkpoint",
    "sam_adaptation_round",
]

SCORE_KEY = "entropy"
INTERACTIVE_CLICKS = 5  # the gate's interactive curve: a box, then this many corrective clicks
INTERACTIVE_TOLERANCE = 0.005  # mean Dice the candidate may lose on it (rounding, not a trend)
# LiteMedSAM methods a round may use: the image encoder stays the bundled one, so the slice embeddings
# the workers computed (ahead and on demand) serve every adapted version unchanged; a method that trains
# the encoder would need every volume encoded again per version (minutes per volume on a CPU).
SAM_METHODS = ("decoder",)


def initial_checkpoint(
    labels: Mapping[int, str],
    path: Path,
    *,
    init_filters: int = 8,
    roi_size: Sequence[int] = (48, 64, 48),
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    seed: int = 0,
    pretrained: Path | None = None,
) -> Path:
    """Write a seeded native 3D net for the label set `labels` (value -> name) to `path`: the base a
    project without a trained checkpoint starts from (its first round trains fully).

    pretrained: a Volume Fusion pretraining file (:func:`~ml_worker.adaptation.pretrain.pretrain` on the
        site's unlabelled volumes, the same ``init_filters``): its weights are transferred onto the net
        (:func:`~ml_worker.adaptation.pretrain.transfer_pretrained`; the head stays initialised).

    Raises:
        TransferError: a pretrained file of another width; CheckpointError: an unreadable one.
    """
    values = sorted(labels)
    config = Native3DConfig(
        num_classes=len(values),
        class_names=tuple(labels[v] for v in values),
        label_values=tuple(values),
        init_filters=init_filters,
        roi_size=tuple(roi_size),
        spacing=None if spacing is None else tuple(spacing),
    )
    torch.manual_seed(seed)
    network = config.build()
    if pretrained is not None:
        transfer_pretrained(Path(pretrained), network)
    return save_native3d(network, config, path)


@dataclass(frozen=True)
class GateOptions:
    """margin, alpha: see :func:`~ml_worker.adaptation.gate.gate`; floor: the least mean Dice of a
    project's first model."""

    margin: float = 0.01
    alpha: float = 0.05
    floor: float = 0.5


@dataclass
class RoundResult:
    """What a round wrote and found.

    validation: Dice per validation case and class of the candidate; active_validation: the same for
    the active model (None without one). promotable/reason: the gate's verdict, also when it could not
    decide (too few validation cases: not promotable, and why).
    """

    adapter: Path
    weights: Path
    base_sha256: str
    method: str
    history: list[dict[str, Any]]
    validation: dict[str, dict[str, float]]
    active_validation: dict[str, dict[str, float]] | None
    promotable: bool
    reason: str
    gate: GateResult | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    interactive: dict[str, list[float]] = field(default_factory=dict)
    active_interactive: dict[str, list[float]] | None = None

    @property
    def interactive_summary(self) -> dict[str, Any]:
        """Mean Dice per step (box, then each click) of the candidate and the active model."""
        return {
            "clicks": INTERACTIVE_CLICKS,
            "candidate": _mean_curve(self.interactive),
            "active": None if self.active_interactive is None else _mean_curve(self.active_interactive),
        }

    @property
    def validation_dice(self) -> float | None:
        means = case_means(self.validation)
        return float(np.mean(list(means.values()))) if means else None


def _mean_curve(curves: Mapping[str, Sequence[float]]) -> list[float] | None:
    if not curves:
        return None
    return [round(float(v), 4) for v in np.mean(list(curves.values()), axis=0)]


def _interactive_verdict(
    candidate: Mapping[str, Sequence[float]], active: Mapping[str, Sequence[float]] | None
) -> str | None:
    """Why the candidate is worse than the active model on the interactive curve (mean Dice over the
    box and the corrective clicks, the same cases), or None when it is not."""
    if active is None:
        return None
    shared = sorted(set(candidate) & set(active))
    if not shared:
        return None
    ours = float(np.mean([np.mean(candidate[c]) for c in shared]))
    theirs = float(np.mean([np.mean(active[c]) for c in shared]))
    if ours < theirs - INTERACTIVE_TOLERANCE:
        return (
            f"not promotable: worse than the active model on the interactive curve (box then "
            f"{INTERACTIVE_CLICKS} corrective clicks, {len(shared)} validation cases): mean Dice "
            f"{ours:.3f} vs {theirs:.3f}; annotators would need more clicks with it"
        )
    return None


def _verdict(
    candidate: dict[str, dict[str, float]],
    active: dict[str, dict[str, float]] | None,
    options: GateOptions,
) -> tuple[bool, str, GateResult | None]:
    if not candidate:
        return False, "not promotable: no approved case of the locked validation split yet", None
    try:
        result = gate(
            case_means(candidate),
            None if active is None else case_means(active),
            margin=options.margin,
            alpha=options.alpha,
            floor=options.floor,
        )
    except GateError as exc:
        return False, f"not promotable: {exc}", None
    return result.promotable, result.reason, result


def adaptation_round(
    *,
    base: Path,
    method: str,
    cases: Sequence[TrainCase],
    validation: Sequence[TrainCase],
    train: TrainConfig,
    out_dir: Path,
    active: Path | None = None,
    snapshot_ids: Sequence[str] = (),
    options: GateOptions = GateOptions(),
    progress: ProgressCallback | None = None,
) -> RoundResult:
    """Adapt `base` with `method` on `cases`, judge it against `active` on `validation`.

    Training checkpoints each epoch under ``out_dir/checkpoint``; calling again with the same arguments
    after a crash resumes there. The adapter (``out_dir/adapter.pt``) and the merged weights
    (``out_dir/weights.pt``) are written atomically, last, so a crash never leaves half a model.

    Raises:
        CheckpointError: `base` or `active` is missing, corrupt, or does not fit.
        ValueError: no training cases, or cases with labels outside the base's label set.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    trainer = Trainer.from_base(
        Path(base),
        method=get_method("native3d", method),
        train=train,
        checkpoint_dir=out_dir / "checkpoint",
        progress=progress,
    )
    # The active model first: a bad file fails the round before any training time is spent.
    active_task = (
        None if active is None else Native3DTask.from_checkpoint(Path(active), device=trainer.device)
    )
    fitted = trainer.fit(cases, resume=True)
    candidate = trainer.evaluate(validation) if validation else {}
    active_scores = (
        None
        if active_task is None or not validation
        else evaluate_task(active_task, validation, modality=train.modality)
    )
    promotable, reason, verdict = _verdict(candidate, active_scores, options)
    curves, active_curves = {}, None
    if validation and trainer.config.guidance:
        # the interactive curve too: a model annotators click with must not need more clicks
        curves = _curve(Native3DTask(network=trainer.network, config=trainer.config), validation, train)
        if active_task is not None and active_task.config.guidance:
            active_curves = _curve(active_task, validation, train)
        worse = _interactive_verdict(curves, active_curves)
        if worse is not None and promotable:
            promotable, reason = False, worse
    means = case_means(candidate)
    adapter = out_dir / "adapter.pt"
    trainer.save_adapter(
        adapter,
        data_snapshot_ids=snapshot_ids,
        metrics={"validation_dice": float(np.mean(list(means.values()))) if means else None},
    )
    weights = save_native3d(merge(trainer.network).cpu(), trainer.config, out_dir / "weights.pt")
    return RoundResult(
        adapter=adapter,
        weights=weights,
        base_sha256=trainer.base_sha256 or "",
        method=method,
        history=fitted.history,
        validation=candidate,
        active_validation=active_scores,
        promotable=promotable,
        reason=reason,
        gate=verdict,
        seconds=time.perf_counter() - start,
        interactive=curves,
        active_interactive=active_curves,
    )


def sam_adaptation_round(
    *,
    method: str,
    cases: Sequence[TrainCase],
    validation: Sequence[TrainCase],
    train: SamTrainConfig,
    out_dir: Path,
    active: Path | None = None,
    active_sha256: str | None = None,
    rival: Path | None = None,
    modality: str = "MR",
    embeddings: EmbeddingCache | None = None,
    encoder: str = "auto",
    snapshot_ids: Sequence[str] = (),
    options: GateOptions = GateOptions(),
    progress: Callable[[int, int, float], None] | None = None,
    device: str | None = None,
) -> RoundResult:
    """Adapt the bundled LiteMedSAM with `method` on `cases`; judge it against the LiteMedSAM that answers
    the project now (`active`, an earlier version's weights, or the bundled model) on `validation`.

    Both are scored as annotators use them: per case and class, Dice after a jittered 3D box (the gate's
    paired test), then the interactive curve (box and corrective clicks; the candidate may not be worse
    on it). `rival`, the project's active native net, is scored on the same boxes and clicks, so the
    platform can route boxes and clicks to whichever does better (``RoundResult.extra["rival"]``).
    Embeddings of the bundled encoder are read from (and added to) `embeddings`, keyed as the
    interactive worker keys them. Resumable like :func:`adaptation_round`; ``out_dir/adapter.pt`` and
    ``out_dir/weights.pt`` (a plain LiteMedSAM state dict) are written last, atomically.

    Raises:
        CheckpointError: `active` or `rival` is missing, corrupt or not the right network (before any
            training time is spent).
        AdapterError: a method that trains the image encoder, or not a LiteMedSAM method.
        ValueError: no training cases, or no labelled structure on them.
    """
    from ml_worker.adaptation.peft import AdapterError

    if method not in SAM_METHODS:
        get_method("litemedsam", method)  # an unknown name lists the known ones
        raise AdapterError(
            f"a learning round adapts LiteMedSAM with {', '.join(SAM_METHODS)} only: {method!r} trains "
            "the image encoder, so every volume would have to be encoded again for its version"
        )
    if not cases:
        raise ValueError("no training cases")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    dev = select_device(device)
    # The models compared first: a bad file fails the round before any training time is spent.
    try:
        incumbent = (
            load_litemedsam(device=dev)
            if active is None
            else load_litemedsam(path=Path(active), expected_sha256=active_sha256, device=dev)
        )
    except CheckpointError as exc:
        raise CheckpointError(f"the active LiteMedSAM version cannot be loaded: {exc}") from None
    try:
        rival_task = None if rival is None else Native3DTask.from_checkpoint(Path(rival), device=dev)
    except CheckpointError as exc:
        raise CheckpointError(f"the active native model cannot be loaded: {exc}") from None
    base = load_litemedsam(device=dev)
    cache = embeddings if embeddings is not None else EmbeddingCache(max_bytes=2 << 30)
    shared = {
        "device": dev,
        "base_sha256": LITEMEDSAM_SHA256,
        "embeddings": cache,
        "encoder": build_encoder(copy.deepcopy(base), encoder, weights_id=LITEMEDSAM_SHA256),
    }
    trainer = SamTrainer(
        base,
        get_method("litemedsam", method),
        train,
        progress=progress,
        checkpoint_dir=out_dir / "checkpoint",
        **shared,
    )
    fitted = trainer.fit(cases, resume=True)
    curve = {"n_clicks": INTERACTIVE_CLICKS, "seed": train.seed}
    candidate, curves = trainer.interactive(validation, **curve) if validation else ({}, {})
    # the incumbent is only scored: the method just decides what would train
    judge = SamTrainer(incumbent, get_method("litemedsam", method), train, **shared)
    active_scores, active_curves = judge.interactive(validation, **curve) if validation else ({}, {})
    promotable, reason, verdict = _verdict(candidate, active_scores, options)
    worse = _interactive_verdict(curves, active_curves)
    if worse is not None and promotable:
        promotable, reason = False, worse
    rival_curves = None
    if rival_task is not None and rival_task.config.guidance and validation:
        rival_curves = interactive_curve(
            rival_task, validation, modality=modality, n_clicks=INTERACTIVE_CLICKS, seed=train.seed
        )
    means = case_means(candidate)
    adapter = out_dir / "adapter.pt"
    trainer.save_adapter(
        adapter,
        data_snapshot_ids=snapshot_ids,
        metrics={"validation_box_dice": float(np.mean(list(means.values()))) if means else None},
    )
    weights = save_atomic(merge(trainer.model).cpu().state_dict(), out_dir / "weights.pt")
    losses = fitted["losses"]
    every = max(1, len(losses) // 20)
    return RoundResult(
        adapter=adapter,
        weights=weights,
        base_sha256=LITEMEDSAM_SHA256,
        method=method,
        history=[{"step": i + 1, "loss": round(v, 5)} for i, v in enumerate(losses) if (i + 1) % every == 0],
        validation=candidate,
        active_validation=active_scores,
        promotable=promotable,
        reason=reason,
        gate=verdict,
        seconds=time.perf_counter() - start,
        extra={
            "model": "litemedsam",
            "metric": "Dice after a jittered 3D box",
            "rival": None if rival_curves is None else _mean_curve(rival_curves),
        },
        interactive=curves,
        active_interactive=active_curves,
    )


def _curve(task: Native3DTask, cases: Sequence[TrainCase], train: TrainConfig) -> dict[str, list[float]]:
    return interactive_curve(
        task, cases, modality=train.modality, n_clicks=INTERACTIVE_CLICKS, seed=train.seed
    )


SecondOpinion = Callable[[Path, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class ScoredVolume:
    """A pool volume after scoring: its item, the model's pre-segmentation and the second opinion's.

    labels: the model's uint8 label map (None at cold start).
    second: the second opinion's uint8 label map (LiteMedSAM prompted with boxes around `labels`), when
        the scorer has one.
    """

    item: PoolItem
    labels: np.ndarray | None = None
    second: np.ndarray | None = None


class PoolScorer:
    """Scores unlabelled volumes for the worklist.

    With `weights` (the active model), each volume is pre-segmented and gets the entropy of the
    prediction (mean over the foreground region, per class too) and an intensity embedding; without, it
    gets the embedding only and :meth:`rank` orders by diversity (cold start). With a `second_opinion`
    (``(volume path, label map) -> label map``: LiteMedSAM prompted with a box around each structure the
    model found), each volume also gets the ``disagreement`` score of the two (``1 - Dice`` per class, the
    class mean as the volume score), which the ``disagreement`` strategy ranks by.
    """

    def __init__(
        self,
        weights: Path | None,
        *,
        modality: str,
        device: str | None = None,
        second_opinion: SecondOpinion | None = None,
    ) -> None:
        self.task = None if weights is None else Native3DTask.from_checkpoint(Path(weights), device=device)
        self.modality = modality
        self.second_opinion = None if self.task is None else second_opinion

    @property
    def class_names(self) -> tuple[str, ...]:
        return () if self.task is None else self.task.config.class_names

    def item(self, volume_id: str, path: Path) -> ScoredVolume:
        """The volume's pool item, with a model its pre-segmentation, with a second opinion that too."""
        array, affine = load_volume(Path(path))
        if self.task is None:
            return ScoredVolume(PoolItem(volume_id=volume_id, embedding=intensity_embedding(array)))
        prediction = self.task(image=array, affine=affine, modality=self.modality)
        methods, second, other = [SCORE_KEY], None, None
        if self.second_opinion is not None:
            second = self.second_opinion(Path(path), prediction.labels)
            values = self.task.config.label_values
            onehot = torch.as_tensor(np.stack([second == v for v in values]).astype(np.float32))
            methods.append("disagreement")

            def other(_image: torch.Tensor) -> torch.Tensor:
                return onehot[None]

        inputs = ScoringInput(
            volume_id=volume_id,
            image=torch.as_tensor(np.asarray(array, dtype=np.float32))[None],
            class_names=self.class_names,
            probs=prediction.probabilities,
            predict_other=other,
        )
        return ScoredVolume(score_volume(inputs, methods=methods), prediction.labels, second)

    def presegmentation_choice(self, cases: Sequence[TrainCase]) -> dict[str, Any]:
        """Which pre-segmentation is better on `cases` (the locked validation cases with their approved
        masks): the model's own, or the second opinion's. Mean Dice per case (over the classes the case
        labels) of each; ``use`` is ``"second"`` only when it is better on the mean (a tie keeps the
        model's, which needs no slice embeddings)."""
        if self.task is None or self.second_opinion is None:
            raise ValueError("a pre-segmentation choice needs a model and a second opinion")
        names = {v: n for n, v in self.task.config.labels.items()}
        scores: dict[str, list[float]] = {"model": [], "second": []}
        for case in cases:
            scored = self.item(case.case_id, Path(case.image))
            truth = np.rint(load_volume(case.label)[0]).astype(np.int64)
            for key, labels in (("model", scored.labels), ("second", scored.second)):
                per_class = [dice(labels == v, truth == v) for v in names if v in case.labelled]
                scores[key].append(float(np.mean(per_class)) if per_class else 0.0)
        means = {k: float(np.mean(v)) if v else None for k, v in scores.items()}
        better = bool(scores["model"]) and means["second"] > means["model"]
        return {
            "cases": len(cases),
            "model": means["model"],
            "second": means["second"],
            "use": "second" if better else "model",
        }

    @staticmethod
    def embedded(volume_id: str, path: Path) -> PoolItem:
        """A labelled volume as a diversity centre (its embedding only)."""
        array, _ = load_volume(Path(path))
        return PoolItem(volume_id=volume_id, embedding=intensity_embedding(array))

    def rank(
        self,
        items: Sequence[PoolItem],
        *,
        strategy: str,
        labelled: Sequence[PoolItem] = (),
        k: int | None = None,
        seed: int = 0,
    ) -> list[Ranked]:
        """The pool, most worth labelling first; by diversity when there is no model (cold start)."""
        rng = np.random.default_rng(seed)
        if self.task is not None:
            return get_strategy(strategy).rank(items, k=k, labelled=labelled, rng=rng)
        ranked = get_strategy("diversity").rank(items, k=k, labelled=labelled, rng=rng)
        return [
            Ranked(r.volume_id, r.score, f"no model yet, ranked by diversity: {r.reason}") for r in ranked
        ]
