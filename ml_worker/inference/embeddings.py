"""Image embeddings of every slice of a volume, computed once and cached.

The LiteMedSAM image encoder costs ~1.3 s per slice on a 2-core CPU in torch float32 (~0.3-0.6 s on
the runtimes of `ml_worker.models.encoders`) and the prompt decoder ~0.1 s, so a volume is encoded
ahead (at pre-segmentation, or slice by slice on demand: see `slice_store`) and every later prompt
only decodes. Embeddings
are float16, ``(K, 256, 64, 64)`` = 2 MiB per slice: a 35-slice hippocampus crop is 73 MiB, a
128-slice MR 268 MiB, hence a cache bounded by bytes.

Slices are taken along ``axis`` of the ``[i, j, k]`` volume; a slice shown as an image is indexed
``[row, col]`` with ``col`` the lower of the two in-plane axes (``i`` for ``axis=2``) and ``row``
the higher (``j``), so model points are ``x = i, y = j`` for slices along k.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml_worker.inference.slice_store import SliceStore
from ml_worker.models.encoders import SliceEncoder, TorchEncoder
from ml_worker.models.litemedsam import (
    EMBEDDING_DIM,
    EMBEDDING_SIZE,
    LiteMedSAM,
    SliceTransform,
    preprocess_slice,
)

Progress = Callable[[int, int], None]  # (slices done, slices in all)


def in_plane_axes(axis: int) -> tuple[int, int]:
    """The two volume axes of a slice along `axis`, as (x axis = column, y axis = row)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    a, b = (d for d in range(3) if d != axis)
    return a, b


def volume_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` along `axis` as a 2D image ``[row, col]`` (see the module docstring)."""
    in_plane_axes(axis)
    return np.take(array, index, axis=axis).T


def set_volume_slice(volume: np.ndarray, axis: int, index: int, image: np.ndarray) -> None:
    """Write a 2D ``[row, col]`` image back as slice `index` along `axis` of `volume` (in place)."""
    target = [slice(None)] * 3
    target[axis] = index
    volume[tuple(target)] = image.T


def normalise_mr(array: np.ndarray, *, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Intensities clipped to the volume's own `lower`-`upper` percentiles, scaled to [0, 1], float32.

    Per volume, because MR intensities have no absolute scale (the hippocampus maxima range from 121
    to ~1.7e6 between cases).
    """
    x = np.nan_to_num(np.asarray(array, dtype=np.float32))
    lo, hi = (float(v) for v in np.percentile(x, [lower, upper]))
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, dtype=np.float32)


def slice_transform(shape: tuple[int, int, int], axis: int) -> SliceTransform:
    """The `SliceTransform` shared by every slice along `axis` of a volume of `shape` (I, J, K)."""
    a, b = in_plane_axes(axis)
    _, transform = preprocess_slice(np.zeros((shape[b], shape[a]), dtype=np.float32))
    return transform


@dataclass(frozen=True, eq=False)
class VolumeEmbeddings:
    """Encoder output for every slice of one volume along one axis.

    embeddings: ``(K, 256, 64, 64)`` float16 (K = slices along `axis`; may be memory-mapped).
    shape: the volume's ``(I, J, K)``.
    store: where the embeddings are still arriving slice by slice (encode on demand); None when
        every slice is there.
    """

    embeddings: np.ndarray
    shape: tuple[int, int, int]
    axis: int = 2
    store: SliceStore | None = None

    def __post_init__(self) -> None:
        expected = (self.shape[self.axis], EMBEDDING_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE)
        if tuple(self.embeddings.shape) != expected:
            raise ValueError(
                f"embeddings of shape {tuple(self.embeddings.shape)} do not fit a volume of "
                f"{self.shape} sliced along axis {self.axis}: expected {expected}"
            )

    @property
    def n_slices(self) -> int:
        return int(self.embeddings.shape[0])

    def ready(self) -> np.ndarray:
        """Bool ``(K,)``: the slices encoded so far (all of them without a `store`)."""
        if self.store is None:
            return np.ones(self.n_slices, dtype=bool)
        return self.store.done()

    @property
    def transform(self) -> SliceTransform:
        return slice_transform(self.shape, self.axis)

    def slice_shape(self) -> tuple[int, int]:
        """(rows, cols) of one slice as an image."""
        a, b = in_plane_axes(self.axis)
        return self.shape[b], self.shape[a]

    def tensor(self, indices: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Embeddings of slices `indices` as a float32 ``(len(indices), 256, 64, 64)`` tensor."""
        block = np.asarray(self.embeddings[indices], dtype=np.float32)
        return torch.from_numpy(block).to(device)


@torch.inference_mode()
def encode_slices(
    encoder: SliceEncoder, volume: np.ndarray, indices: list[int], *, axis: int = 2
) -> np.ndarray:
    """Encode slices `indices` along `axis` of a normalised volume (see `normalise_mr`).

    Returns:
        ``(len(indices), 256, 64, 64)`` float16 embeddings.
    """
    if not indices:
        return np.empty((0, EMBEDDING_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE), dtype=np.float16)
    images = torch.stack([preprocess_slice(volume_slice(volume, axis, k))[0] for k in indices])
    return encoder(images).numpy().astype(np.float16)


@torch.inference_mode()
def encode_volume(
    model: LiteMedSAM,
    array: np.ndarray,
    *,
    axis: int = 2,
    batch_size: int = 4,
    progress: Progress | None = None,
    normalise: Callable[[np.ndarray], np.ndarray] = normalise_mr,
    encoder: SliceEncoder | None = None,
) -> np.ndarray:
    """Encode every slice of a volume along `axis`.

    Args:
        model: LiteMedSAM in eval mode.
        array: ``(I, J, K)`` volume, any real dtype.
        axis: slice axis (2: slices along k).
        batch_size: slices per encoder call.
        progress: called with (slices done, slices in all) after each batch.
        normalise: volume-level intensity normalisation before each slice's own min-max
            (default `normalise_mr`).
        encoder: the runtime to encode with (see `ml_worker.models.encoders.build_encoder`);
            default the model in torch (float32 on CPU).

    Returns:
        ``(K, 256, 64, 64)`` float16 embeddings, K = ``array.shape[axis]``.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got shape {array.shape}")
    in_plane_axes(axis)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if encoder is None:
        encoder = TorchEncoder(model)
    volume = normalise(array)
    n = volume.shape[axis]
    out = np.empty((n, EMBEDDING_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE), dtype=np.float16)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out[start:stop] = encode_slices(encoder, volume, list(range(start, stop)), axis=axis)
        if progress is not None:
            progress(stop, n)
    return out


def cache_key(*parts: object) -> str:
    """A cache key from parts, e.g. ``cache_key(volume_sha256, "litemedsam", model_sha256, axis)``."""
    return "/".join(str(p) for p in parts)


class EmbeddingCache:
    """Embeddings by key, bounded in memory by bytes (least recently used evicted first).

    With `directory`, every entry is also written there as ``<sha256(key)>.npy`` (temporary file, then
    rename, so a crash never leaves a partial file under its final name) and a miss in memory is
    loaded from disk memory-mapped, so a restarted worker does not re-encode. Entries evicted from
    memory stay on disk; the folder is not bounded here (delete files to bound it).

    Thread-safe for concurrent get/put. Arrays returned are read-only.
    """

    def __init__(self, *, max_bytes: int = 2 << 30, directory: Path | str | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the entries held in memory (memory-mapped ones counted at full size)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries or (self._path(key) is not None and self._path(key).is_file())

    def keys(self) -> list[str]:
        """Keys held in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"

    def _remember(self, key: str, array: np.ndarray) -> None:
        # caller holds the lock
        if key in self._entries:
            self._nbytes -= self._entries.pop(key).nbytes
        if array.nbytes > self.max_bytes:
            return
        self._entries[key] = array
        self._nbytes += array.nbytes
        while self._nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._nbytes -= evicted.nbytes

    def get(self, key: str) -> np.ndarray | None:
        """The entry for `key` (memory first, then disk), or None."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        array = np.load(path, mmap_mode="r")
        with self._lock:
            self._remember(key, array)
        return array

    def put(self, key: str, array: np.ndarray) -> np.ndarray:
        """Store `array` under `key` (replacing any entry); returns the stored, read-only array."""
        array = np.ascontiguousarray(array)
        path = self._path(key)
        if path is not None:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".npy.part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            array = np.load(path, mmap_mode="r")
        else:
            array = array.view()
            array.flags.writeable = False
        with self._lock:
            self._remember(key, array)
        return array

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The entry for `key`, computing and storing it on a miss."""
        array = self.get(key)
        if array is None:
            array = self.put(key, compute())
        return array

    def evict(self, key: str) -> None:
        """Forget `key` in memory (its file on disk stays)."""
        with self._lock:
            if key in self._entries:
                self._nbytes -= self._entries.pop(key).nbytes
