"""Active-learning simulation: selection strategies x seeds on labelled cases, an oracle giving labels.

What ``python -m ml_worker al-simulate`` runs. Every case has a label file, but the simulation hides
them: a strategy sees only what the platform would see (images, model scores, embeddings), and the
"oracle" hands over a case's label once the strategy has selected it.

Cases. Without separate test folders, :func:`split_cases` holds out the fixed hash part of
:func:`~ml_worker.adaptation.splits.partition` (default salt: the very test part ``train
--test-fraction`` and ``peft-compare`` use); the rest is the unlabelled pool. ``pool_limit`` and
``test_limit`` keep the first N of each part in that hash order (a fixed subset, for quick runs).
Test cases are never selected or trained on.

One run (a strategy and a seed)::

    round 0   cold start: the strategy ranks the pool with nothing labelled, on model-free intensity
              embeddings of the preprocessed images (Strategy interface, labelled=()): every strategy
              but ``random`` falls back to ``diversity`` (k-center greedy), ``random`` stays random
              (it is the baseline) -> the oracle labels ``initial`` cases -> a network initialised with
              ``torch.manual_seed(seed)`` (and, with ``pretrained``, the Volume Fusion weights
              transferred onto it) trains on them (``initial_train``)
    round r   the current model scores the unlabelled pool (the strategy's score: entropy, tta,
              mc_dropout, disagreement; nothing for random and diversity) and, where the strategy reads
              embeddings (diversity, hybrid), embeds the cases by global average + max pooling of the
              network's bottleneck (:func:`score_pool`) -> the strategy selects ``per_round`` cases ->
              the oracle labels them -> the SAME network, warm-started from the previous round's
              weights (not re-initialised; a new AdamW state and cosine schedule), trains on all
              labelled cases for ``round_train``'s fixed number of steps
    after each round: pre-segmentation Dice (no prompts) per test case and class through the inference
              path (:meth:`~ml_worker.adaptation.train.Trainer.evaluate`)

``disagreement`` compares the current model with the one before the last adaptation; in round 1 there
is no such model, so the strategy's cold-start rule (diversity) applies there.

Pairing. For one seed, every strategy starts from the same initial weights and uses the same training
seeds per round (``1000 * seed + round``); only what is selected differs. Selection ties are broken by a
generator seeded with the seed and the strategy's name.

Fully supervised reference (per seed): the same network, initialised the same way, trained from scratch
on the whole pool with the hyper-parameters of ``initial_train`` for as many optimizer steps in total as
the final model of an AL run has received (``initial`` steps + ``rounds`` x round steps, one cosine
schedule), unless ``reference_steps`` sets another number. The same compute, all labels.

Output (:func:`run_simulation`): ``results.json`` (rewritten after every round, so a stopped run keeps
what it did) and ``al_curve.png`` (:func:`plot_curves`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_worker.adaptation.peft import get_method
from ml_worker.adaptation.pretrain import transfer_pretrained
from ml_worker.adaptation.splits import partition
from ml_worker.adaptation.train import ProgressCallback, TrainCase, TrainConfig, Trainer, case_means
from ml_worker.experiments.compare import _mean_per_class
from ml_worker.inference.native import Native3DTask
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import (
    CheckpointError,
    autocast,
    file_sha256,
    load_state_dict,
    select_device,
)
from ml_worker.models.native3d import Native3DConfig
from ml_worker.uncertainty.pool import PoolItem
from ml_worker.uncertainty.scorers import ScoringConfig, ScoringInput, score_volume
from ml_worker.uncertainty.strategies import HybridStrategy, Strategy, get_strategy

__all__ = [
    "RESULTS_NAME",
    "CURVE_NAME",
    "PoolViews",
    "SimulationConfig",
    "plot_curves",
    "run_simulation",
    "score_pool",
    "simulate",
    "split_cases",
    "summarize",
]

RESULTS_NAME = "results.json"
CURVE_NAME = "al_curve.png"


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of a simulation.

    strategies: selection strategy names (:data:`~ml_worker.uncertainty.strategies.STRATEGIES`).
    initial: cases labelled by the cold start; per_round: cases selected per round; rounds: rounds
        after the cold start (0: only the initial model).
    seeds: one run per strategy and seed.
    model: the network to train (label set, width, roi, spacing).
    initial_train: training of the first model, from scratch; round_train: each warm-started
        adaptation. Both need a fixed number of steps (``steps_per_epoch >= 1``); their seeds are set
        per run and round (see the module docstring).
    reference_steps: steps of the fully supervised reference (0: the rule of the module docstring).
    pretrained: a Volume Fusion pretraining file (:func:`~ml_worker.adaptation.pretrain.pretrain`)
        every network starts from, transferred by :func:`~ml_worker.adaptation.pretrain.
        transfer_pretrained` (the head and the guidance kernels keep their seeded initialisation);
        None starts from the seeded initialisation alone.
    scoring: how the scorers reduce their maps (its seed is set per run and round).
    test_fraction: the fixed test part when no test cases are given (see :func:`split_cases`).
    """

    strategies: tuple[str, ...]
    initial: int
    per_round: int
    rounds: int
    model: Native3DConfig
    initial_train: TrainConfig
    round_train: TrainConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    reference_steps: int = 0
    pretrained: Path | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        if self.pretrained is not None:
            object.__setattr__(self, "pretrained", Path(self.pretrained))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        problems = []
        if not self.strategies:
            problems.append("no strategy given")
        if len(set(self.strategies)) != len(self.strategies):
            problems.append(f"strategies are listed twice: {list(self.strategies)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.initial < 1 or self.per_round < 1 or self.rounds < 0 or self.reference_steps < 0:
            problems.append(
                "initial and per_round must be >= 1, rounds and reference_steps >= 0; got "
                f"{self.initial}, {self.per_round}, {self.rounds}, {self.reference_steps}"
            )
        if not self.initial_train.steps_per_epoch or not self.round_train.steps_per_epoch:
            problems.append(
                "initial_train and round_train need a fixed number of steps (steps_per_epoch >= 1)"
            )
        if problems:
            raise ValueError("invalid SimulationConfig: " + "; ".join(problems))
        for name in self.strategies:
            get_strategy(name)  # an unknown name fails here, listing the known ones

    @property
    def budgets(self) -> list[int]:
        """Labelled cases after each round: ``initial``, ``initial + per_round``, ..."""
        return [self.initial + r * self.per_round for r in range(self.rounds + 1)]

    @property
    def total_steps(self) -> int:
        """Optimizer steps the final model of a run has received."""
        return _steps(self.initial_train) + self.rounds * _steps(self.round_train)

    def check_pool(self, n_pool: int) -> None:
        """Raises ValueError when the budgets do not fit a pool of `n_pool` cases."""
        if self.initial > n_pool:
            raise ValueError(
                f"initial={self.initial} labelled cases do not fit the pool of {n_pool} unlabelled cases"
            )
        if self.budgets[-1] > n_pool:
            raise ValueError(
                f"initial + rounds x per_round = {self.initial} + {self.rounds} x {self.per_round} = "
                f"{self.budgets[-1]} labelled cases exceed the pool of {n_pool} cases"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategies": list(self.strategies),
            "initial": self.initial,
            "per_round": self.per_round,
            "rounds": self.rounds,
            "seeds": list(self.seeds),
            "budgets": self.budgets,
            "model": self.model.to_dict(),
            "initial_train": self.initial_train.to_dict(),
            "round_train": self.round_train.to_dict(),
            "reference_steps": self.reference_steps or self.total_steps,
            "pretrained": None if self.pretrained is None else str(self.pretrained),
            "scoring": dataclasses.asdict(self.scoring),
        }


def _steps(train: TrainConfig) -> int:
    return train.epochs * train.steps_per_epoch


def split_cases(
    cases: Sequence[TrainCase],
    *,
    test: Sequence[TrainCase] | None = None,
    test_fraction: float = 0.2,
    pool_limit: int = 0,
    test_limit: int = 0,
) -> tuple[list[TrainCase], list[TrainCase]]:
    """``(pool, test)``: `cases` and the given `test` cases, or the fixed hash split of `cases`.

    Without `test`, the test part is :func:`~ml_worker.adaptation.splits.partition`'s (its default
    salt, no source part) and the pool the rest, both in its hash order. ``pool_limit`` and
    ``test_limit`` keep the first N of each (0: all).

    Raises:
        ValueError: duplicate case ids, given test cases whose ids are also in `cases`, an empty part.
    """
    by_id = {c.case_id: c for c in cases}
    if len(by_id) != len(cases):
        raise ValueError("case ids must be distinct")
    if test is None:
        parts = partition(list(by_id), test_fraction=test_fraction, source_fraction=0.0)
        pool, held = [by_id[c] for c in parts["pool"]], [by_id[c] for c in parts["test"]]
    else:
        both = sorted(set(by_id) & {c.case_id for c in test})
        if both:
            raise ValueError(
                f"{len(both)} test case(s) are also in the pool (same ids): {', '.join(both[:5])}; "
                "a test case must never be selected or trained on"
            )
        pool, held = list(cases), list(test)
    pool = pool[:pool_limit] if pool_limit else pool
    held = held[:test_limit] if test_limit else held
    if not pool or not held:
        raise ValueError(f"an empty part: {len(pool)} pool and {len(held)} test cases")
    return pool, held


class PoolViews:
    """Each case's image on the network grid (the inference pre-transforms, no prompts), computed once.

    :meth:`inputs` is the network input of pre-segmentation (the image and zero guidance channels);
    :meth:`cold_item` the case with its model-free :func:`~ml_worker.uncertainty.embedding.
    intensity_embedding` (what the cold start ranks by).
    """

    def __init__(self, model: Native3DConfig, *, modality: str) -> None:
        self.model = model
        # the pre-transforms depend on the configuration only, not on the weights
        self._transform = Native3DTask(network=model.build(), config=model, device="cpu").pre_transforms(
            modality=modality
        )
        self._images: dict[str, torch.Tensor] = {}
        self._cold: dict[str, PoolItem] = {}

    def image(self, case: TrainCase) -> torch.Tensor:
        """``(1, X, Y, Z)`` float32 on the CPU."""
        if case.case_id not in self._images:
            image, affine = load_volume(case.image)
            data = self._transform({"image": image, "affine": affine, "prompts": None})
            self._images[case.case_id] = data["image"].as_tensor().float()
        return self._images[case.case_id]

    def inputs(self, case: TrainCase) -> torch.Tensor:
        """``(in_channels, X, Y, Z)``: the image and zero guidance channels."""
        image = self.image(case)
        return torch.cat([image, image.new_zeros((self.model.in_channels - 1, *image.shape[1:]))])

    def cold_item(self, case: TrainCase) -> PoolItem:
        if case.case_id not in self._cold:
            self._cold[case.case_id] = score_volume(
                ScoringInput(
                    volume_id=case.case_id, image=self.image(case), class_names=self.model.class_names
                ),
                methods=[],
            )
        return self._cold[case.case_id]


def _probabilities(task: Native3DTask) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(1, C_in, X, Y, Z)`` network-grid input -> ``(1, C, X, Y, Z)`` sigmoid probabilities on the CPU,
    through the task's inferer (sliding window when the grid exceeds the ROI). Leaves the network's
    train/eval modes alone (MC dropout sets them)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(task.device):
            logits = task.inferer(tuple(x.shape[2:]))(x.to(task.device), task.network)
        return torch.sigmoid(logits.float()).cpu()

    return predict


def score_pool(
    strategy: Strategy,
    *,
    network: torch.nn.Module,
    pool: Sequence[TrainCase],
    labelled: Sequence[TrainCase],
    views: PoolViews,
    scoring: ScoringConfig,
    previous: torch.nn.Module | None = None,
    device: torch.device | str | None = None,
) -> tuple[list[PoolItem], list[PoolItem]]:
    """``(pool items, labelled items)`` for `strategy` from the current `network`.

    ``random`` gets bare items (it reads nothing). Every other strategy gets the score it reads on every
    pool case (computed by :func:`~ml_worker.uncertainty.scorers.score_volume`; ``disagreement`` needs
    `previous`, the model to disagree with, and without it gets none, i.e. its cold-start rule). Where
    the strategy reads embeddings, they are the global average and max pooling of the network's
    bottleneck features: on the pool for ``hybrid`` (it clusters the pool), on pool and labelled cases
    for ``diversity`` and a strategy without its score (k-center greedy counts labelled cases as
    centres). Embeddings nobody reads are not computed with the network (pool items then carry
    :func:`score_volume`'s model-free one, labelled items none).
    """
    if strategy.name == "random":
        return [PoolItem(c.case_id) for c in pool], [PoolItem(c.case_id) for c in labelled]
    task = Native3DTask(network=network, config=views.model, device=device)  # eval mode
    methods = [strategy.score_key.split("/")[0]] if strategy.score_key else []
    other = None
    if "disagreement" in methods:
        if previous is None:
            methods = []
        else:
            other = _probabilities(Native3DTask(network=previous, config=views.model, device=task.device))
    diverse = not methods  # ranks by k-center greedy: diversity, or a strategy's cold-start rule
    embedded = diverse or isinstance(strategy, HybridStrategy)

    def features(x: torch.Tensor) -> torch.Tensor:
        with autocast(task.device):
            return task.network.encode(x.to(task.device))[0].float()

    def item(case: TrainCase, names: list[str]) -> PoolItem:
        inputs = ScoringInput(
            volume_id=case.case_id,
            image=views.inputs(case),
            class_names=views.model.class_names,
            predict=_probabilities(task) if names else None,
            model=task.network,
            predict_other=other,
            features=features if embedded else None,
        )
        return score_volume(inputs, methods=names, config=scoring)

    known = [item(c, []) if diverse else PoolItem(c.case_id) for c in labelled]
    return [item(c, methods) for c in pool], known


def _rank(
    strategy: Strategy,
    pool: list[PoolItem],
    k: int,
    labelled: list[PoolItem],
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """The ids of the `k` cases `strategy` selects and its reasons (what the worklist would show)."""
    ranked = strategy.rank(pool, k=k, labelled=labelled, rng=rng)[:k]
    return [r.volume_id for r in ranked], [r.reason for r in ranked]


def _scores(per_case: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "dice": _mean_per_class(per_case),
        "dice_mean": float(np.mean(list(case_means(per_case).values()))),
    }


ProgressFactory = Callable[[str], ProgressCallback | None]


class _Simulation:
    """The shared state of one simulation: cases, views, device, callbacks."""

    def __init__(
        self,
        pool: Sequence[TrainCase],
        test: Sequence[TrainCase],
        config: SimulationConfig,
        *,
        device: str | None,
        progress_factory: ProgressFactory | None,
    ) -> None:
        self.pool, self.test, self.config = list(pool), list(test), config
        self.by_id = {c.case_id: c for c in self.pool}
        self.device = select_device(device)
        self.views = PoolViews(config.model, modality=config.initial_train.modality)
        self.progress = progress_factory or (lambda name: None)
        self.method = get_method("native3d", "full")
        self.pretrained: dict[str, torch.Tensor] | None = None
        self.transfer: dict[str, Any] | None = None
        if config.pretrained is not None:
            try:
                self.pretrained = load_state_dict(config.pretrained)
            except CheckpointError as exc:
                raise ValueError(f"--pretrained: {exc}") from None
            # a file of another width fails here, before any training
            self.transfer = transfer_pretrained(self.pretrained, config.model.build()).summary() | {
                "sha256": file_sha256(config.pretrained)
            }

    def fresh_network(self, seed: int) -> torch.nn.Module:
        """The seeded initialisation, with the pretrained weights transferred onto it when given."""
        torch.manual_seed(seed)
        network = self.config.model.build()
        if self.pretrained is not None:
            transfer_pretrained(self.pretrained, network)
        return network

    def train_and_test(
        self, network: torch.nn.Module, cases: list[TrainCase], train: TrainConfig, name: str
    ) -> dict[str, Any]:
        """Train `network` in place on `cases` (warm: whatever weights it has), then score the test part."""
        trainer = Trainer(
            network=network,
            config=self.config.model,
            method=self.method,
            train=train,
            device=self.device,
            progress=self.progress(name),
        )
        fitted = trainer.fit(cases)
        began = time.perf_counter()
        scores = _scores(trainer.evaluate(self.test))
        return scores | {
            "train_steps": _steps(train),
            "train_seconds": round(fitted.seconds, 2),
            "eval_seconds": round(time.perf_counter() - began, 2),
        }

    def run(self, name: str, seed: int, rows: list[dict[str, Any]], on_round: Callable[[dict], None]) -> None:
        """One run of strategy `name` with `seed`; each round's row is appended to `rows`."""
        config = self.config
        strategy = get_strategy(name)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        network = self.fresh_network(seed)
        previous: torch.nn.Module | None = None
        labelled: list[str] = []
        for r in range(config.rounds + 1):
            began = time.perf_counter()
            taken = set(labelled)
            unlabelled = [c for c in self.pool if c.case_id not in taken]
            if r == 0:
                items, known, k = [self.views.cold_item(c) for c in unlabelled], [], config.initial
            else:
                items, known = score_pool(
                    strategy,
                    network=network,
                    pool=unlabelled,
                    labelled=[self.by_id[c] for c in labelled],
                    views=self.views,
                    scoring=dataclasses.replace(config.scoring, seed=1000 * seed + r),
                    previous=previous,
                    device=self.device,
                )
                k = config.per_round
            score_seconds = time.perf_counter() - began
            selected, reasons = _rank(strategy, items, k, known, rng)
            labelled += selected  # the oracle hands over their labels
            if r and strategy.score_key == "disagreement":
                previous = copy.deepcopy(network)
            train = config.initial_train if r == 0 else config.round_train
            row = {
                "round": r,
                "n_labelled": len(labelled),
                "selected": selected,
                "reasons": reasons,
                "score_seconds": round(score_seconds, 2),
            } | self.train_and_test(
                network,
                [self.by_id[c] for c in labelled],
                dataclasses.replace(train, seed=1000 * seed + r),
                f"{name} seed {seed} round {r}",
            )
            rows.append(row)
            on_round({"strategy": name, "seed": seed} | row)

    def reference(self, seed: int) -> dict[str, Any]:
        steps = self.config.reference_steps or self.config.total_steps
        train = dataclasses.replace(
            self.config.initial_train, epochs=1, steps_per_epoch=steps, seed=1000 * seed
        )
        row = {"n_labelled": len(self.pool)} | self.train_and_test(
            self.fresh_network(seed), self.pool, train, f"supervised seed {seed}"
        )
        return row


def simulate(
    pool: Sequence[TrainCase],
    test: Sequence[TrainCase],
    *,
    config: SimulationConfig,
    device: str | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    progress_factory: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Run every strategy x seed and the fully supervised reference (see the module docstring).

    Args:
        pool: the unlabelled cases (labels known to the oracle only); test: the fixed test cases.
        config: what to simulate.
        device: "cpu", "cuda", ... (default: CUDA when available).
        on_round: called with each round's row (plus ``strategy``/``seed``, or ``reference: True``).
        on_update: called with the report so far after each round and at the end (e.g. to write it).
        progress_factory: given a training run's name, a progress callback or None.

    Returns:
        The report: ``settings``, ``parts`` (pool and test ids), ``runs`` (strategy -> seed -> rows, one
        per round: n_labelled, selected ids and reasons, test Dice per class and mean, train steps and
        seconds, scoring and evaluation seconds), ``reference`` (seed -> row) and ``summary``
        (:func:`summarize`).

    Raises:
        ValueError: budgets that do not fit the pool, test cases in the pool, duplicate ids, a
            pretrained file that cannot be read or does not fit the network (another width).
    """
    on_round = on_round or (lambda row: None)
    config.check_pool(len(pool))
    pool_ids = {c.case_id for c in pool}
    if len(pool_ids) != len(pool) or pool_ids & {c.case_id for c in test}:
        raise ValueError("pool case ids must be distinct, and no test case may be in the pool")
    began = time.perf_counter()
    sim = _Simulation(pool, test, config, device=device, progress_factory=progress_factory)
    report: dict[str, Any] = {
        "settings": config.to_dict() | {"device": str(sim.device), "transfer": sim.transfer},
        "parts": {"pool": [c.case_id for c in pool], "test": [c.case_id for c in test]},
        "runs": {name: {} for name in config.strategies},
        "reference": {},
    }
    update = on_update or (lambda report: None)

    def done(row: dict[str, Any]) -> None:
        on_round(row)
        update(report)  # after every round: a stopped simulation keeps what it did

    for name in config.strategies:
        for seed in config.seeds:
            run_began = time.perf_counter()
            entry = report["runs"][name][str(seed)] = {"seconds": None, "rounds": []}
            sim.run(name, seed, entry["rounds"], done)
            entry["seconds"] = round(time.perf_counter() - run_began, 2)
    for seed in config.seeds:
        row = report["reference"][str(seed)] = sim.reference(seed)
        done({"reference": True, "seed": seed} | row)
    report["wall_seconds"] = round(time.perf_counter() - began, 2)
    report["summary"] = summarize(report)
    update(report)
    return report


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def summarize(report: dict[str, Any], *, digits: int = 4) -> dict[str, Any]:
    """Mean test Dice over seeds at each budget per strategy (with std, min, max), its difference to
    ``random`` at the same budget (None without a random run), the mean over the curve, wall seconds;
    and the fully supervised reference."""

    def r(x: float) -> float:
        return round(float(x), digits)

    budgets = report["settings"]["budgets"]
    strategies: dict[str, Any] = {}
    for name, seeds in report["runs"].items():
        per_budget = [[run["rounds"][i]["dice_mean"] for run in seeds.values()] for i in range(len(budgets))]
        stats = [_stats(v) for v in per_budget]
        strategies[name] = {
            "dice_mean": [r(s["mean"]) for s in stats],
            "dice_std": [r(s["std"]) for s in stats],
            "dice_min": [r(s["min"]) for s in stats],
            "dice_max": [r(s["max"]) for s in stats],
            "curve_mean": r(np.mean([s["mean"] for s in stats])),
            "seconds": r(sum(run["seconds"] for run in seeds.values())),
        }
    random = strategies.get("random")
    for entry in strategies.values():
        entry["minus_random"] = (
            None
            if random is None
            else [r(a - b) for a, b in zip(entry["dice_mean"], random["dice_mean"], strict=True)]
        )
    reference = report["reference"]
    supervised = None
    if reference:
        stats = _stats([row["dice_mean"] for row in reference.values()])
        supervised = {
            "n_labelled": next(iter(reference.values()))["n_labelled"],
            "train_steps": next(iter(reference.values()))["train_steps"],
            "dice_mean": r(stats["mean"]),
            "dice_min": r(stats["min"]),
            "dice_max": r(stats["max"]),
            "seconds": r(sum(row["train_seconds"] + row["eval_seconds"] for row in reference.values())),
        }
    return {
        "budgets": budgets,
        "seeds": len(report["settings"]["seeds"]),
        "test_cases": len(report["parts"]["test"]),
        "pool_cases": len(report["parts"]["pool"]),
        "strategies": strategies,
        "supervised": supervised,
        "wall_seconds": report.get("wall_seconds"),
    }


def plot_curves(report: dict[str, Any], path: Path) -> Path:
    """Mean test Dice against labelled volumes, per strategy: the mean over seeds, a min-max band, and a
    dashed line for the fully supervised reference. Written as PNG with matplotlib's Agg canvas (no
    display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = report.get("summary") or summarize(report)
    budgets = summary["budgets"]
    figure = Figure(figsize=(7.5, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, entry in summary["strategies"].items():
        (line,) = axes.plot(budgets, entry["dice_mean"], marker="o", label=name)
        if summary["seeds"] > 1:
            axes.fill_between(
                budgets, entry["dice_min"], entry["dice_max"], color=line.get_color(), alpha=0.18
            )
    supervised = summary["supervised"]
    if supervised is not None:
        axes.axhline(
            supervised["dice_mean"],
            color="black",
            linestyle="--",
            label=f"fully supervised ({supervised['n_labelled']} volumes)",
        )
    band = f", band: min-max over {summary['seeds']} seeds" if summary["seeds"] > 1 else ", 1 seed"
    axes.set_title(f"Active learning: test Dice on {summary['test_cases']} volumes (mean{band})", fontsize=10)
    axes.set_xlabel("labelled volumes")
    axes.set_ylabel("mean Dice (pre-segmentation, test set)")
    axes.set_xticks(budgets)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def run_simulation(
    pool: Sequence[TrainCase],
    test: Sequence[TrainCase],
    *,
    config: SimulationConfig,
    out: Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`simulate`, writing ``out/results.json`` as it goes and ``out/al_curve.png`` at the end."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def write(report: dict[str, Any]) -> None:
        tmp = out / f".{RESULTS_NAME}.tmp"
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out / RESULTS_NAME)

    report = simulate(pool, test, config=config, on_update=write, **kwargs)
    plot_curves(report, out / CURVE_NAME)
    return report
