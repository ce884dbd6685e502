"""PEFT comparison: each method x number of labelled cases ("shots"), adapted from one base, one test set.

What ``python -m ml_worker peft-compare`` runs. The cases (image/label pairs) are ordered once by a hash
of their ids (:func:`partition`) and cut into fixed parts, the same on every run and machine:

    test    the first ``test_fraction`` of the order: every model is scored on these, never trained
    source  the next ``source_fraction`` (only without a given base): the base is trained on them,
            fully supervised, so the adaptation starts from a model that has seen other cases
    pool    the rest: a run with k shots adapts on the first k of the pool (so 5 shots are inside 10)

Every adaptation starts from the same base checkpoint, runs the same number of optimizer steps with the
same hyper-parameters and seed, and is scored by pre-segmentation Dice (no prompts) per class on the test
part. A row records the method, shots, mean Dice per class, trainable parameters, adapter file bytes and
training seconds; the base itself is the row with method ``"base"`` and 0 shots.

Resumable: the report so far goes to ``on_report`` after the base and after every row (the command
writes it to ``peft_compare.json``), and a run given that report as ``earlier`` takes its rows instead
of training them again (and a base it trained, while the file is unchanged), so a long comparison
stopped after some rows goes on from there, and another run may add methods or shots. An earlier report
of other settings is refused.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_worker.adaptation.peft import count_trainable, get_method
from ml_worker.adaptation.splits import partition
from ml_worker.adaptation.train import TrainCase, TrainConfig, Trainer, case_means
from ml_worker.adaptation.train_sam import SamTrainConfig, SamTrainer
from ml_worker.inference.embeddings import EmbeddingCache
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, file_sha256, load_litemedsam
from ml_worker.models.encoders import build_encoder
from ml_worker.models.native3d import Native3DConfig, load_native3d, save_native3d

__all__ = ["CompareConfig", "peft_compare", "sam_compare"]


@dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison.

    methods: native3d PEFT method names; shots: numbers of labelled pool cases.
    adapt: hyper-parameters of every adaptation; base: of the base training (without a given base).
    model: the base network to train (without a given base); ignored with one.
    test_fraction, source_fraction: the fixed parts (see :func:`partition`).
    test_limit: score on only the first N test cases (quick runs); 0 for all.
    """

    methods: tuple[str, ...]
    shots: tuple[int, ...]
    adapt: TrainConfig
    base: TrainConfig
    model: Native3DConfig | None = None
    test_fraction: float = 0.2
    source_fraction: float = 0.4
    test_limit: int = 0


def _mean_per_class(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    names = sorted({n for scores in per_case.values() for n in scores})
    return {n: float(np.mean([s[n] for s in per_case.values() if n in s])) for n in names}


def _row(method: str, shots: int, per_case: dict[str, dict[str, float]], **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "shots": shots,
        "dice": _mean_per_class(per_case),
        "dice_mean": float(np.mean(list(case_means(per_case).values()))),
        **extra,
    }


def _adapted_row(
    trainer: Trainer | SamTrainer,
    method: str,
    shots: int,
    chosen: Sequence[TrainCase],
    test: Sequence[TrainCase],
    path: Path,
) -> dict[str, Any]:
    """Adapt on `chosen`, score on `test`, write the adapter to `path`: one row of the table."""
    began = time.perf_counter()
    trainer.fit(chosen)
    seconds = time.perf_counter() - began
    per_case = trainer.evaluate(test)
    trainer.save_adapter(
        path, data_snapshot_ids=[c.case_id for c in chosen], metrics={"test_dice": _mean_per_class(per_case)}
    )
    module = trainer.network if isinstance(trainer, Trainer) else trainer.model
    return _row(
        method,
        shots,
        per_case,
        trainable_params=count_trainable(module),
        adapter_bytes=path.stat().st_size,
        train_seconds=round(seconds, 2),
    )


def _earlier_rows(earlier: Mapping[str, Any] | None, identity: dict[str, Any]) -> dict[tuple[str, int], dict]:
    """The rows of an earlier report of the same comparison by (method, shots); none without one.

    Raises:
        ValueError: the earlier report was made with other settings.
    """
    if not earlier:
        return {}
    if earlier.get("identity") != identity:
        raise ValueError(
            "the earlier report in this folder was made with other settings (a different base, training, "
            "split or test set): give another --out, or the same settings to go on with it"
        )
    return {(row["method"], int(row["shots"])): row for row in earlier.get("rows", [])}


@dataclass
class _Table:
    """The report as it grows, handed out after every row (see the module docstring)."""

    identity: dict[str, Any]
    settings: dict[str, Any]
    parts: dict[str, list[str]]
    base: dict[str, Any]
    expected: int  # rows of the whole comparison, the base's included
    on_row: Callable[[dict[str, Any]], None] | None
    on_report: Callable[[dict[str, Any]], None] | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.on_row:
            self.on_row(row)
        if self.on_report:
            self.on_report(self.report())

    def report(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "complete": len(self.rows) == self.expected,
            "settings": self.settings,
            "parts": self.parts,
            "base": self.base,
            "rows": self.rows,
        }


def peft_compare(
    cases: Sequence[TrainCase],
    *,
    config: CompareConfig,
    out: Path,
    base: Path | None = None,
    device: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress_factory: Callable[[str], Callable[[int, int, int, dict[str, float]], None] | None] | None = None,
    earlier: Mapping[str, Any] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the comparison; adapters and (without `base`) the trained base go under `out`.

    Args:
        cases: every labelled case (each with its labelled values).
        config: what to compare (see :class:`CompareConfig`).
        out: output folder.
        base: a native3d base checkpoint; None trains one on the source part first.
        device: "cpu", "cuda", ... (default: CUDA when available).
        on_row: called with each result row as it is ready.
        progress_factory: given a run name ("base", "lora_conv/5"), returns a progress callback or None.
        earlier: the report of an earlier run in `out` (see the module docstring).
        on_report: called with the report so far after the base and after each row.

    Returns:
        The report: settings, the parts (case ids), the base, and the rows.

    Raises:
        ValueError: unknown methods, more shots than the pool holds, a pool or source part that is empty,
            an earlier report of other settings.
    """
    out = Path(out)
    methods = [get_method("native3d", m) for m in config.methods]  # unknown names fail before any work
    by_id = {c.case_id: c for c in cases}
    parts = partition(
        list(by_id),
        test_fraction=config.test_fraction,
        source_fraction=0.0 if base is not None else config.source_fraction,
    )
    if base is None and not parts["source"]:
        raise ValueError("no source cases to train a base on: raise source_fraction or give a base")
    too_many = [k for k in config.shots if k > len(parts["pool"]) or k < 1]
    if too_many:
        raise ValueError(
            f"shots {too_many} do not fit the pool of {len(parts['pool'])} cases (each must be 1..pool)"
        )
    test = [by_id[c] for c in parts["test"]]
    if config.test_limit:
        test = test[: config.test_limit]
    progress = progress_factory or (lambda name: None)
    identity = {
        "model": "native3d",
        "base": None if base is None else file_sha256(base),
        "base_training": None if base is not None else config.base.to_dict(),
        "network": None if base is not None or config.model is None else config.model.to_dict(),
        "adapt": config.adapt.to_dict(),
        "test_fraction": config.test_fraction,
        "source_fraction": config.source_fraction if base is None else 0.0,
        "test": [c.case_id for c in test],
    }
    done = _earlier_rows(earlier, identity)
    base_info: dict[str, Any] = {"trained": False}
    kept = out / "base.pt"
    if base is None and done and kept.is_file() and file_sha256(kept) == earlier["base"].get("sha256"):
        base = kept  # the base the earlier run trained
        base_info = {k: earlier["base"][k] for k in ("trained", "seconds", "cases")}
    elif base is None:
        done = {}  # rows adapted from a base that is gone are not this run's
        if config.model is None:
            raise ValueError("a model configuration is needed to train a base")
        trainer = Trainer(
            network=config.model.build(),
            config=config.model,
            method=get_method("native3d", "full"),
            train=config.base,
            device=device,
            progress=progress("base"),
        )
        fitted = trainer.fit([by_id[c] for c in parts["source"]])
        base = save_native3d(trainer.network, config.model, kept)
        base_info = {"trained": True, "seconds": fitted.seconds, "cases": len(parts["source"])}
    network, model_config = load_native3d(base)
    base_sha = file_sha256(base)
    base_info |= {
        "path": str(base),
        "sha256": base_sha,
        "parameters": sum(p.numel() for p in network.parameters()),
    }

    table = _Table(
        identity=identity,
        settings={
            "methods": list(config.methods),
            "shots": list(config.shots),
            "adapt": config.adapt.to_dict(),
            "base_training": config.base.to_dict() if base_info["trained"] else None,
            "model": model_config.to_dict(),
            "test_fraction": config.test_fraction,
            "source_fraction": config.source_fraction if base_info["trained"] else 0.0,
            "test_cases": len(test),
        },
        parts={"test": [c.case_id for c in test], "source": parts["source"], "pool": parts["pool"]},
        base=base_info,
        expected=1 + len(methods) * len(config.shots),
        on_row=on_row,
        on_report=on_report,
    )
    if ("base", 0) in done:
        table.add(done["base", 0])
    else:
        scorer = Trainer(
            network=network,
            config=model_config,
            method=get_method("native3d", "full"),
            train=config.adapt,
            device=device,
        )
        table.add(
            _row("base", 0, scorer.evaluate(test), trainable_params=0, adapter_bytes=0, train_seconds=0.0)
        )

    for method in methods:
        for shots in config.shots:
            path = out / "adapters" / f"{method.name}_{shots}.adapter"
            if (method.name, shots) in done and path.is_file():
                table.add(done[method.name, shots])
                continue
            trainer = Trainer.from_base(
                base,
                method=get_method("native3d", method.name, **method.params),
                train=config.adapt,
                device=device,
                progress=progress(f"{method.name}/{shots}"),
            )
            chosen = [by_id[c] for c in parts["pool"][:shots]]
            table.add(_adapted_row(trainer, method.name, shots, chosen, test, path))
    return table.report()


def sam_compare(
    cases: Sequence[TrainCase],
    *,
    methods: Sequence[str],
    shots: Sequence[int],
    train: SamTrainConfig,
    out: Path,
    base: Path | None = None,
    test_fraction: float = 0.2,
    test_limit: int = 0,
    device: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress_factory: Callable[[str], Callable[[int, int, float], None] | None] | None = None,
    embeddings: EmbeddingCache | None = None,
    encoder: str = "auto",
    earlier: Mapping[str, Any] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The same comparison for LiteMedSAM (:mod:`ml_worker.adaptation.train_sam`): every method x shots
    adapts the base LiteMedSAM weights (the bundled ones, or `base`) on the first `shots` pool cases and
    is scored on the fixed test part by box-prompted Dice (one exact box per slice, ``dice``) and as an
    annotator gets it (``box3d``: Dice after a jittered 3D box with slice propagation, and ``curve``:
    after the box and each of 5 corrective clicks, the learning round's protocol); the base itself is
    the row ``"base"``. There is no base training: the base is the pretrained foundation model.

    Methods that leave the image encoder frozen share one set of slice embeddings (`embeddings`, encoded
    once per volume by the `encoder` runtime; give it a folder to keep them across runs, e.g. the one
    ``interactive-eval --cache-dir`` fills); the others encode with their adapted encoder every step.

    `earlier` and `on_report`: as for :func:`peft_compare`.

    Raises:
        ValueError: unknown methods, more shots than the pool holds, an earlier report of other settings.
    """

    out = Path(out)
    for name in methods:
        get_method("litemedsam", name)  # unknown names fail before any work
    by_id = {c.case_id: c for c in cases}
    parts = partition(list(by_id), test_fraction=test_fraction, source_fraction=0.0)
    too_many = [k for k in shots if k > len(parts["pool"]) or k < 1]
    if too_many:
        raise ValueError(
            f"shots {too_many} do not fit the pool of {len(parts['pool'])} cases (each must be 1..pool)"
        )
    test = [by_id[c] for c in parts["test"]][: test_limit or None]
    progress = progress_factory or (lambda name: None)
    model = load_litemedsam(path=base) if base is not None else load_litemedsam()
    base_sha = file_sha256(base) if base is not None else LITEMEDSAM_SHA256
    cache = embeddings if embeddings is not None else EmbeddingCache(max_bytes=4 << 30)
    runtime = build_encoder(copy.deepcopy(model), encoder, weights_id=base_sha)

    def trainer(method: str, name: str) -> SamTrainer:
        return SamTrainer(
            copy.deepcopy(model),
            get_method("litemedsam", method),
            train,
            device=device,
            progress=progress(name),
            base_sha256=base_sha,
            embeddings=cache,
            encoder=runtime,
        )

    def in_3d(row: dict[str, Any], scored: SamTrainer) -> dict[str, Any]:
        boxed, curves = scored.interactive(test, n_clicks=5, seed=train.seed)
        row["box3d"] = _mean_per_class(boxed)
        row["box3d_mean"] = float(np.mean(list(case_means(boxed).values())))
        row["curve"] = [round(float(v), 4) for v in np.mean(list(curves.values()), axis=0)]
        return row

    identity = {
        "model": "litemedsam",
        "base": base_sha,
        "adapt": train.to_dict(),
        "test_fraction": test_fraction,
        "test": [c.case_id for c in test],
        "encoder": runtime.name,
    }
    done = _earlier_rows(earlier, identity)
    table = _Table(
        identity=identity,
        settings={
            "model": "litemedsam",
            "methods": list(methods),
            "shots": list(shots),
            "adapt": train.to_dict(),
            "test_fraction": test_fraction,
            "test_cases": len(test),
            "metric": "dice: one exact box per slice of the truth; box3d: a jittered 3D box, slice "
            "propagation; curve: box3d then 5 corrective clicks (mean over classes and cases)",
            "encoder": runtime.name,
        },
        parts={"test": [c.case_id for c in test], "pool": parts["pool"]},
        base={"path": str(base) if base is not None else "bundled LiteMedSAM", "sha256": base_sha},
        expected=1 + len(methods) * len(shots),
        on_row=on_row,
        on_report=on_report,
    )
    if ("base", 0) in done:
        table.add(done["base", 0])
    else:
        scorer = trainer("decoder", "base")
        base_row = _row(
            "base", 0, scorer.evaluate(test), trainable_params=0, adapter_bytes=0, train_seconds=0.0
        )
        table.add(in_3d(base_row, scorer))
    for method in methods:
        for k in shots:
            path = out / "adapters" / f"litemedsam_{method}_{k}.adapter"
            if (method, k) in done and path.is_file():
                table.add(done[method, k])
                continue
            chosen = [by_id[c] for c in parts["pool"][:k]]
            adapted = trainer(method, f"{method}/{k}")
            table.add(in_3d(_adapted_row(adapted, method, k, chosen, test, path), adapted))
    return table.report()
