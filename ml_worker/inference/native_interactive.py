"""The warm native 3D net of an interactive worker: a project's adapted model answering boxes and clicks.

Like the LiteMedSAM segmenter (:mod:`ml_worker.inference.interactive`), a request carries the whole
interaction for one structure (its box and every click so far), so any worker can answer it. The worker
that answered the previous request of the same interaction keeps its session (the structure's current
mask): when the new request only adds clicks, only those are run, each editing the mask the annotator
sees (:class:`~ml_worker.inference.native.Native3DSession`); otherwise the interaction is replayed.

Models are keyed by the sha256 of their weights file: a promotion or a rollback changes the file a
project routes to, so the next request loads the new model and the old one ages out; nothing needs to
be told. Loaded models and volumes are kept in small LRU caches (a hippocampus-sized model is ~10 MB).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_worker.inference.native import Native3DSession, Native3DTask
from ml_worker.inference.prompts import Box3D, Click, PromptError
from ml_worker.io.volume import load_volume

__all__ = ["NativeAnswer", "NativeSegmenter"]


_Live = tuple[Native3DSession, Box3D, tuple[Click, ...]]  # a session, its box, the clicks it has seen


@dataclass(frozen=True)
class NativeAnswer:
    """The mask of one structure after a request, and what it cost."""

    mask: np.ndarray  # bool (I, J, K)
    seconds: float
    incremental: bool  # only the new clicks were run (a warm session)
    loaded: bool  # the model was loaded for this request (a cold worker or a new version)


class NativeSegmenter:
    """Native 3D models of several projects' versions in one process.

    Args:
        max_models: models kept loaded (least recently used dropped first).
        max_volumes: volumes kept in memory.
        max_sessions: live sessions (model, volume, structure) kept.
        device: where the models run (default CUDA when present).
    """

    def __init__(
        self, *, max_models: int = 2, max_volumes: int = 4, max_sessions: int = 32, device: str | None = None
    ) -> None:
        self.device = device
        self.max_models, self.max_volumes, self.max_sessions = max_models, max_volumes, max_sessions
        self._models: OrderedDict[str, Native3DTask] = OrderedDict()
        self._volumes: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._sessions: OrderedDict[tuple[str, str, int], _Live] = OrderedDict()
        self._lock = threading.Lock()  # one request at a time per process

    @staticmethod
    def _touch(cache: OrderedDict, key, limit: int, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key], False
        cache[key] = make()
        while len(cache) > limit:
            cache.popitem(last=False)
        return cache[key], True

    def loaded(self, weights_sha256: str) -> bool:
        return weights_sha256 in self._models

    def segment(
        self,
        *,
        weights_path: Path,
        weights_sha256: str,
        volume_path: Path,
        volume_sha256: str,
        modality: str,
        label: int,
        box: Box3D,
        clicks: tuple[Click, ...],
    ) -> NativeAnswer:
        """The mask of structure `label` after `box` and `clicks` (all the clicks given so far).

        Raises:
            PromptError: a prompt for another label or outside the volume, or a label the model does
                not segment.
            CheckpointError: the weights file is missing or does not hold a native 3D model.
        """
        if box.label != label or any(c.label != label for c in clicks):
            raise PromptError(f"every prompt of a request must be for label {label}")
        began = time.perf_counter()
        with self._lock:
            task, loaded = self._touch(
                self._models,
                weights_sha256,
                self.max_models,
                lambda: Native3DTask.from_checkpoint(Path(weights_path), device=self.device),
            )
            image, affine = self._touch(
                self._volumes, volume_sha256, self.max_volumes, lambda: load_volume(Path(volume_path))
            )[0]
            key = (weights_sha256, volume_sha256, label)
            live = self._sessions.pop(key, None)
            if live is not None and live[1] == box and clicks[: len(live[2])] == live[2]:
                session, new_clicks, incremental = live[0], clicks[len(live[2]) :], True
                mask = session.mask
            else:
                session = Native3DSession(task, image=image, affine=affine, modality=modality, label=label)
                mask, new_clicks, incremental = session.start(box), clicks, False
            for click in new_clicks:
                mask = session.click(click)
            self._sessions[key] = (session, box, clicks)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return NativeAnswer(mask, time.perf_counter() - began, incremental, loaded)
