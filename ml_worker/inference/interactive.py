"""The warm interactive segmenter a worker process keeps: one model, its encoder, embeddings, sessions.

A request carries the whole interaction for one structure (its box and every click so far), so any
worker can answer it and a lost worker loses nothing. The worker that answered the previous request
of the same interaction still holds its session: when the new request only adds clicks to what that
session has seen, only the new clicks are decoded (the cheap path, ~5 slices per click); otherwise the
interaction is replayed from the box.

Encode on demand (see `slice_store`): a volume whose embeddings are not complete is still answered at
once. The slice the box or the last click is on is encoded here first (~0.3-0.6 s on a 2-core CPU),
that slice is decoded and the answer goes back with how many slices of the structure's slab are ready;
the embeddings task (:meth:`InteractiveSegmenter.embed`, queue ``gpu``) encodes the rest of the slab
outward from that slice, and the same request sent again (the page polls) grows the mask over the
slices that have arrived. Volumes at the top of the worklist are encoded whole ahead of time.

A project's adapted LiteMedSAM (a learning round's version: the bundled model with its mask decoder
adapted, :func:`~ml_worker.adaptation.round.sam_adaptation_round`) answers over the same embeddings: its
image encoder is the bundled one, so only its decoder is loaded (by the sha256 of its weights file, a few
kept warm).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_worker.inference.embeddings import (
    EmbeddingCache,
    VolumeEmbeddings,
    cache_key,
    encode_slices,
    normalise_mr,
)
from ml_worker.inference.prompts import Box3D, Click, PromptError
from ml_worker.inference.sam3d import LiteMedSAM3D, PropagationConfig
from ml_worker.inference.slice_store import Focus, Readiness, SliceStore, iter_pending
from ml_worker.io.volume import load_volume
from ml_worker.models.checkpoints import LITEMEDSAM_SHA256, load_litemedsam, select_device
from ml_worker.models.encoders import build_encoder
from ml_worker.models.litemedsam import LiteMedSAM

MODEL_ID = f"litemedsam/{LITEMEDSAM_SHA256[:16]}"


def embeddings_key(volume_sha256: str, axis: int = 2) -> str:
    """The cache key of a volume's embeddings (the same as ``interactive-eval --cache-dir`` uses)."""
    return cache_key(volume_sha256, MODEL_ID, f"axis{axis}")


@dataclass(frozen=True)
class Answer:
    """The mask for one structure after a request, and what it cost.

    ready: slices of the structure's slab (the box's extent along the slice axis) encoded so far,
        of `ready.total`; `pending` is True while the mask will still grow as more arrive.
    """

    mask: np.ndarray  # bool (I, J, K)
    seconds: float
    slices_decoded: int
    incremental: bool  # only new clicks (or newly arrived slices) were decoded: a warm session
    ready: Readiness
    pending: bool
    slices_encoded: int = 0  # encoded for this request (the prompted slices, on demand)


class InteractiveSegmenter:
    """LiteMedSAM 3D for many volumes and structures in one process.

    Args:
        embeddings_dir: shared folder of embeddings (written by :meth:`embed` and on demand).
        cache_bytes: bound of the complete embeddings held in memory.
        max_sessions: live sessions kept (least recently used dropped first).
        device: where the model runs (default CUDA when present).
        axis: slice axis of the 2D model (2: the acquisition plane of an axial series).
        encoder: image encoder runtime (see `ml_worker.models.encoders`; "auto": the fastest here).
        volumes_kept: normalised volumes kept in memory for encoding on demand.
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
        encoder: str = "auto",
        volumes_kept: int = 2,
    ) -> None:
        self.axis = axis
        self.device = select_device(device)
        self.model = load_litemedsam(device=self.device)
        self.directory = Path(embeddings_dir)
        self.encoder = build_encoder(self.model, encoder, weights_id=LITEMEDSAM_SHA256)
        self.cache = EmbeddingCache(max_bytes=cache_bytes, directory=embeddings_dir)
        self.propagation = propagation or PropagationConfig()
        self.max_sessions = max_sessions
        self.volumes_kept = volumes_kept
        # (weights sha, volume sha, label) -> (session, box, clicks it has seen)
        self._sessions: OrderedDict[tuple[str, str, int], tuple[LiteMedSAM3D, Box3D, tuple[Click, ...]]] = (
            OrderedDict()
        )
        self._versions: OrderedDict[str, LiteMedSAM] = OrderedDict()  # adapted versions by weights sha
        self.versions_kept = 2
        self._volumes: OrderedDict[str, np.ndarray] = OrderedDict()  # sha -> normalised volume
        self._lock = threading.Lock()  # one model call at a time per process: the model is not re-entrant

    def key(self, volume_sha256: str) -> str:
        return embeddings_key(volume_sha256, self.axis)

    def has_embeddings(self, volume_sha256: str) -> bool:
        return self.key(volume_sha256) in self.cache

    def store(self, volume_sha256: str, shape: tuple[int, int, int], axis: int | None = None) -> SliceStore:
        axis = self.axis if axis is None else axis
        return SliceStore(self.directory, embeddings_key(volume_sha256, axis), shape[axis])

    def axis_for(self, box: Box3D) -> int:
        """The slice axis that answers `box`. A box one voxel thin along another axis is a rectangle
        drawn on a slice of that view (a coronal or sagittal one): LiteMedSAM, a 2D model, answers it
        on that slice, as drawn, instead of as a sheet of rows of the segmenter's own slices (on 12
        held-out hippocampus cases, Dice on the drawn slice 0.81-0.85 per structure against 0.57-0.66
        as a sheet). Every other box is answered along the segmenter's axis."""
        thin = [a for a in range(3) if box.lo[a] == box.hi[a]]
        return thin[0] if len(thin) == 1 and thin[0] != self.axis else self.axis

    def _volume(self, volume_path: Path, volume_sha256: str) -> np.ndarray:
        volume = self._volumes.pop(volume_sha256, None)
        if volume is None:
            array, _ = load_volume(volume_path)
            volume = normalise_mr(array)
        self._volumes[volume_sha256] = volume
        while len(self._volumes) > self.volumes_kept:
            self._volumes.popitem(last=False)
        return volume

    def decoder(self, weights: Path | None, weights_sha256: str | None) -> LiteMedSAM:
        """The model whose prompt encoder and mask decoder answer: the bundled one without `weights`,
        else an adapted version's (loaded once, its sha256 checked).

        Raises:
            CheckpointError: the weights file is missing, corrupt, another sha256 or not LiteMedSAM.
        """
        if weights is None:
            return self.model
        key = str(weights_sha256)
        model = self._versions.pop(key, None)
        if model is None:
            model = load_litemedsam(path=Path(weights), expected_sha256=weights_sha256, device=self.device)
        self._versions[key] = model
        while len(self._versions) > self.versions_kept:
            self._versions.popitem(last=False)
        return model

    def _encode(self, store: SliceStore, volume: np.ndarray, k: int, axis: int | None = None) -> None:
        with self._lock:
            if not store.done()[k]:
                axis = self.axis if axis is None else axis
                store.write(k, encode_slices(self.encoder, volume, [k], axis=axis)[0])

    def embed(
        self,
        volume_path: Path,
        volume_sha256: str,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Encode a volume's slices not encoded yet, in the order its focus asks for (the slab of the
        last prompted structure outward from the prompted slice, re-read before every slice), until
        it is complete; True if any slice was encoded now. Safe to run twice or beside another worker.

        progress: called with (slices encoded, slices in all) after each slice.
        """
        if self.has_embeddings(volume_sha256):
            return False
        volume = self._volume(volume_path, volume_sha256)
        store = self.store(volume_sha256, volume.shape)
        encoded = 0
        for k in iter_pending(store):
            self._encode(store, volume, k)
            encoded += 1
            if progress is not None:
                progress(int(store.done().sum()), store.n_slices)
        return encoded > 0

    def segment(
        self,
        *,
        volume_path: Path,
        volume_sha256: str,
        shape: tuple[int, int, int],
        label: int,
        box: Box3D,
        clicks: tuple[Click, ...],
        weights: Path | None = None,
        weights_sha256: str | None = None,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> Answer:
        """The mask of structure `label` after `box` and `clicks` (all the clicks given so far), over
        the slices encoded so far. The slices the box (its middle) and the clicks are on are encoded
        first when they are not yet; the slab's other slices are left to :meth:`embed`. A rectangle
        drawn on a slice of another view is answered on that slice (see :meth:`axis_for`). `weights`: an
        adapted version's weights file (with its sha256) answers instead of the bundled model.
        `spacing`: the volume's voxel size in mm (how far a click's change may reach is in mm).

        Raises:
            PromptError: a prompt for another label, or outside the volume.
            CheckpointError: the version's weights cannot be loaded.
        """
        if box.label != label or any(c.label != label for c in clicks):
            raise PromptError(f"every prompt of a request must be for label {label}")
        began = time.perf_counter()
        with self._lock:
            model = self.decoder(weights, weights_sha256)  # a bad file fails before any encoding
        shape = tuple(int(v) for v in shape)
        axis = self.axis_for(box)
        key = embeddings_key(volume_sha256, axis)
        lo, hi = int(box.lo[axis]), int(box.hi[axis])
        stored = self.cache.get(key)
        store = None
        encoded = 0
        if stored is None:
            store = self.store(volume_sha256, shape, axis)
            prompted = [int(c.ijk[axis]) for c in clicks[::-1]] + [(lo + hi) // 2]
            if axis == self.axis:
                store.set_focus(Focus(slice=prompted[0], lo=lo, hi=hi))
            else:  # no embeddings task encodes this view: every slice the prompts span, now
                prompted += list(range(min(prompted), max(prompted) + 1))
            done = store.done()
            todo = list(dict.fromkeys(k for k in prompted if not done[k]))
            if todo:
                volume = self._volume(volume_path, volume_sha256)
                for k in todo:
                    self._encode(store, volume, k, axis)
                encoded = len(todo)
            if store.complete:
                stored, store = self.cache.get(key), None
            else:
                stored = store.array()
        with self._lock:
            key = (str(weights_sha256 or LITEMEDSAM_SHA256), volume_sha256, label)
            live = self._sessions.pop(key, None)
            if live is not None and live[1] == box and clicks[: len(live[2])] == live[2]:
                session, new_clicks, incremental = live[0], clicks[len(live[2]) :], True
                decoded = session.slices_decoded
                mask = session.resume()
            else:
                embeddings = VolumeEmbeddings(stored, shape, axis, store=store)
                session = LiteMedSAM3D(
                    model, embeddings, label=label, config=self.propagation, spacing=spacing
                )
                mask, new_clicks, incremental, decoded = session.start(box), clicks, False, 0
            for click in new_clicks:
                mask = session.click(click)
            self._sessions[key] = (session, box, clicks)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        ready = store.readiness(lo, hi) if store is not None else Readiness(hi - lo + 1, hi - lo + 1)
        return Answer(
            mask,
            time.perf_counter() - began,
            session.slices_decoded - decoded,
            incremental,
            ready=ready,
            pending=session.pending,
            slices_encoded=encoded,
        )

    def boxed(
        self,
        *,
        volume_path: Path,
        volume_sha256: str,
        labels: np.ndarray,
        weights: Path | None = None,
        weights_sha256: str | None = None,
    ) -> np.ndarray:
        """LiteMedSAM's answer to a 3D box around each structure of `labels` (another model's label map
        of the volume, e.g. the native net's pre-segmentation): a uint8 label map of the same shape.
        Only the slab the boxes span is encoded (slices not encoded yet), not the whole volume. Where two
        structures' answers overlap, the lower label value keeps the voxel.

        Raises:
            PromptError: `labels` does not have the volume's shape.
            CheckpointError: the version's weights cannot be loaded.
        """
        labels = np.asarray(labels)
        with self._lock:
            model = self.decoder(weights, weights_sha256)
        volume = self._volume(volume_path, volume_sha256)
        if labels.shape != volume.shape:
            raise PromptError(f"label map of shape {labels.shape} for a volume of {volume.shape}")
        out = np.zeros(labels.shape, np.uint8)
        boxes = []
        for value in (int(v) for v in np.unique(labels) if v):
            where = np.argwhere(labels == value)
            boxes.append(Box3D(value, tuple(where.min(0).tolist()), tuple(where.max(0).tolist())))
        if not boxes:
            return out
        stored, store = self.cache.get(self.key(volume_sha256)), None
        if stored is None:
            store = self.store(volume_sha256, volume.shape)
            lo = min(b.lo[self.axis] for b in boxes)
            hi = max(b.hi[self.axis] for b in boxes)
            for k in range(lo, hi + 1):
                self._encode(store, volume, k)
            if store.complete:
                stored, store = self.cache.get(self.key(volume_sha256)), None
            else:
                stored = store.array()
        embeddings = VolumeEmbeddings(stored, volume.shape, self.axis, store=store)
        with self._lock:
            for box in boxes:
                session = LiteMedSAM3D(model, embeddings, label=box.label, config=self.propagation)
                out[session.start(box) & (out == 0)] = box.label
        return out
