"""The warm interactive segmenter a worker process keeps: one model, cached embeddings, live sessions.

A request carries the whole interaction for one structure (its box and every click so far), so any
worker can answer it and a lost worker loses nothing. The worker that answered the previous request
of the same interaction still holds its session: when the new request only adds clicks to what that
session has seen, only the new clicks are decoded (the cheap path, ~5 slices per click); otherwise the
interaction is replayed from the box.

Embeddings are computed ahead (:meth:`InteractiveSegmenter.embed`, queue ``gpu``, at ingest or
pre-segmentation) and stored in a folder shared by the workers; a request for a volume without them
raises :class:`EmbeddingsMissing` rather than blocking an interactive worker for minutes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_worker.inference.embeddings import EmbeddingCache, VolumeEmbeddings, cache_key, encode_volume
from ml_worker.inference.prompts import Box3D, Click, PromptError
from ml_worker.inference.sam3d import LiteMedSAM3D, PropagationConfig
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, load_litemedsam, select_device

MODEL_ID = f"litemedsam/{LITEMEDSAM_SHA256[:16]}"


def embeddings_key(volume_sha256: str, axis: int = 2) -> str:
    """The cache key of a volume's embeddings (the same as ``interactive-eval --cache-dir`` uses)."""
    return cache_key(volume_sha256, MODEL_ID, f"axis{axis}")


class EmbeddingsMissing(LookupError):
    """The volume's embeddings have not been computed yet."""


@dataclass(frozen=True)
class Answer:
    """The mask for one structure after a request, and what it cost."""

    mask: np.ndarray  # bool (I, J, K)
    seconds: float
    slices_decoded: int
    incremental: bool  # only new clicks were decoded (a warm session)


class InteractiveSegmenter:
    """LiteMedSAM 3D for many volumes and structures in one process.

    Args:
        embeddings_dir: shared folder of embeddings (written by :meth:`embed`).
        cache_bytes: bound of the embeddings held in memory.
        max_sessions: live sessions kept (least recently used dropped first).
        device: where the model runs (default CUDA when present).
        axis: slice axis of the 2D model (2: the acquisition plane of an axial series).
    """

    def __init__(
        self,
        *,
        embeddings_dir: Path,
        cache_bytes: int = 2 << 30,
        max_sessions: int = 64,
        device: str | None = None,
        propagation: PropagationConfig | None = None,
        axis: int = 2,
    ) -> None:
        self.axis = axis
        self.device = select_device(device)
        self.model = load_litemedsam(device=self.device)
        self.cache = EmbeddingCache(max_bytes=cache_bytes, directory=embeddings_dir)
        self.propagation = propagation or PropagationConfig()
        self.max_sessions = max_sessions
        # (volume sha, label) -> (session, box, clicks it has seen)
        self._sessions: OrderedDict[tuple[str, int], tuple[LiteMedSAM3D, Box3D, tuple[Click, ...]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()  # one request at a time per process: the model is not re-entrant

    def key(self, volume_sha256: str) -> str:
        return embeddings_key(volume_sha256, self.axis)

    def has_embeddings(self, volume_sha256: str) -> bool:
        return self.key(volume_sha256) in self.cache

    def embed(self, volume_path: Path, volume_sha256: str) -> bool:
        """Compute and store a volume's embeddings unless they exist; True if computed now."""
        if self.has_embeddings(volume_sha256):
            return False
        array, _ = load_volume(volume_path)
        with self._lock:
            self.cache.put(
                self.key(volume_sha256), encode_volume(self.model, array, axis=self.axis, device=self.device)
            )
        return True

    def segment(
        self,
        *,
        volume_sha256: str,
        shape: tuple[int, int, int],
        label: int,
        box: Box3D,
        clicks: tuple[Click, ...],
    ) -> Answer:
        """The mask of structure `label` after `box` and `clicks` (all the clicks given so far).

        Raises:
            EmbeddingsMissing: :meth:`embed` has not run for this volume.
            PromptError: a prompt for another label, or outside the volume.
        """
        if box.label != label or any(c.label != label for c in clicks):
            raise PromptError(f"every prompt of a request must be for label {label}")
        stored = self.cache.get(self.key(volume_sha256))
        if stored is None:
            raise EmbeddingsMissing(f"no embeddings for volume {volume_sha256[:12]} yet")
        began = time.perf_counter()
        with self._lock:
            key = (volume_sha256, label)
            live = self._sessions.pop(key, None)
            if live is not None and live[1] == box and clicks[: len(live[2])] == live[2]:
                session, new_clicks, incremental = live[0], clicks[len(live[2]) :], True
                decoded = session.slices_decoded
                mask = session.mask
            else:
                embeddings = VolumeEmbeddings(stored, tuple(shape), self.axis)
                session = LiteMedSAM3D(self.model, embeddings, label=label, config=self.propagation)
                mask, new_clicks, incremental, decoded = session.start(box), clicks, False, 0
            for click in new_clicks:
                mask = session.click(click)
            self._sessions[key] = (session, box, clicks)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return Answer(mask, time.perf_counter() - began, session.slices_decoded - decoded, incremental)
