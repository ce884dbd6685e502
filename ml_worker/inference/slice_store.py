"""A volume's slice embeddings as they arrive: encode on demand, prompted slice first.

A first box on a never-seen volume must not wait for every slice to be encoded (~35 slices of a
hippocampus crop, 128+ of a brain MR). So a volume's embeddings file fills slice by slice: the slice a
box or click is on is encoded first (by the interactive worker, and answered at once), and the rest of
the structure's slab is encoded outward from it (by the embeddings task), then the rest of the volume.

Files in the embeddings folder, per cache key (see `embeddings.EmbeddingCache`, whose file the
complete embeddings become):

``<sha256(key)>.npy``          the complete embeddings, ``(K, 256, 64, 64)`` float16
``<sha256(key)>.partial.npy``  the same array while it fills (memory-mapped by every process)
``<sha256(key)>.done``         K bytes: 1 once slice k is written (after its data is flushed)
``<sha256(key)>.focus``        JSON ``{"slice": k, "lo": a, "hi": b}``: where encoding should go next

Workers on one machine or on a shared file system write disjoint slices; two writing the same slice
write the same numbers. The last slice written makes the file complete: it is linked to its final
name (atomic, never over an existing file).

Requests (`request_claim`): one embeddings task per volume. The web process claims a volume with an
exclusive file before queueing the task; the task keeps it fresh while it runs and removes it when
done, and a claim not refreshed for `stale_seconds` (a lost task) can be taken again.

numpy only: the web process imports this module (never torch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDING_SHAPE = (256, 64, 64)  # LiteMedSAM's embedding of one slice
DTYPE = np.float16


def key_stem(key: str) -> str:
    """The file name stem of a cache key (as `EmbeddingCache` names its files)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Focus:
    """Where encoding goes next: `slice` first, then outward through the slab `lo`..`hi` (inclusive)."""

    slice: int
    lo: int
    hi: int


def encoding_order(n: int, focus: Focus | None = None) -> list[int]:
    """The order to encode `n` slices: the focus slice, then the slab outward from it (alternating
    sides, nearest first), then the rest of the volume outward from the slab. Without a focus, outward
    from the middle.

    >>> encoding_order(7, Focus(slice=3, lo=2, hi=5))
    [3, 4, 2, 5, 6, 1, 0]
    """
    if n < 1:
        return []
    if focus is None:
        focus = Focus(slice=(n - 1) // 2, lo=0, hi=n - 1)
    k = min(max(focus.slice, 0), n - 1)
    lo, hi = min(max(focus.lo, 0), k), max(min(focus.hi, n - 1), k)
    order = [k]
    for distance in range(1, n):
        for s in (k + distance, k - distance):
            if lo <= s <= hi:
                order.append(s)
    for distance in range(1, n):
        for s in (hi + distance, lo - distance):
            if 0 <= s < n:
                order.append(s)
    return order


@dataclass(frozen=True)
class Readiness:
    """How much of a slab can be prompted: `ready` of its `total` slices are encoded."""

    ready: int
    total: int

    @property
    def complete(self) -> bool:
        return self.ready >= self.total


class SliceStore:
    """One volume's embeddings, complete or filling slice by slice.

    Args:
        directory: the embeddings folder (shared by the workers).
        key: the volume's cache key (volume sha256, model, axis).
        n_slices: slices along the axis (K).
    """

    def __init__(self, directory: Path | str, key: str, n_slices: int) -> None:
        if n_slices < 1:
            raise ValueError(f"a volume has at least one slice, got {n_slices}")
        self.directory = Path(directory)
        self.key = key
        self.n_slices = int(n_slices)
        stem = key_stem(key)
        self.final_path = self.directory / f"{stem}.npy"
        self.partial_path = self.directory / f"{stem}.partial.npy"
        self.done_path = self.directory / f"{stem}.done"
        self.focus_path = self.directory / f"{stem}.focus"
        self._array: np.ndarray | None = None

    # ---- reading ---------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.final_path.is_file()

    def done(self) -> np.ndarray:
        """Bool ``(K,)``: which slices are encoded."""
        if self.complete:
            return np.ones(self.n_slices, dtype=bool)
        try:
            flags = np.frombuffer(self.done_path.read_bytes(), dtype=np.uint8)
        except FileNotFoundError:
            return np.zeros(self.n_slices, dtype=bool)
        out = np.zeros(self.n_slices, dtype=bool)
        out[: min(flags.size, self.n_slices)] = flags[: self.n_slices] > 0
        return out

    def readiness(self, lo: int = 0, hi: int | None = None) -> Readiness:
        """Encoded slices of the slab `lo`..`hi` (inclusive; default the whole volume)."""
        hi = self.n_slices - 1 if hi is None else hi
        lo, hi = max(lo, 0), min(hi, self.n_slices - 1)
        return Readiness(int(self.done()[lo : hi + 1].sum()), max(hi - lo + 1, 0))

    def array(self) -> np.ndarray:
        """The ``(K, 256, 64, 64)`` float16 embeddings, memory-mapped read-only; slices not yet
        encoded hold zeros (check `done`)."""
        if self.complete:
            return np.load(self.final_path, mmap_mode="r")
        if self._array is None:
            self._create()
            self._array = np.load(self.partial_path, mmap_mode="r+")
        if self.complete:  # finished by another process meanwhile
            return np.load(self.final_path, mmap_mode="r")
        return self._array

    def focus(self) -> Focus | None:
        try:
            data = json.loads(self.focus_path.read_text())
            return Focus(int(data["slice"]), int(data["lo"]), int(data["hi"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def pending(self) -> list[int]:
        """Slices still to encode, in the order of the current focus."""
        done = self.done()
        return [k for k in encoding_order(self.n_slices, self.focus()) if not done[k]]

    # ---- writing ---------------------------------------------------------------------------------

    def set_focus(self, focus: Focus) -> None:
        """Steer the encoder (read between slices by whichever worker encodes)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.focus_path, json.dumps({"slice": focus.slice, "lo": focus.lo, "hi": focus.hi}))

    def write(self, k: int, embedding: np.ndarray) -> bool:
        """Store slice `k`'s ``(256, 64, 64)`` embedding; True when that made the volume complete."""
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice {k} of a volume of {self.n_slices} slices")
        if self.complete:
            return False
        array = self.array()
        if array.flags.writeable:
            array[k] = np.asarray(embedding, dtype=DTYPE)
            array.flush()
        fd = os.open(self.done_path, os.O_CREAT | os.O_RDWR, 0o666)  # never truncated: others write too
        try:
            os.pwrite(fd, b"\x01", k)
        finally:
            os.close(fd)
        if self.done().all():
            self._finish()
            return True
        return False

    def _create(self) -> None:
        if self.partial_path.is_file():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".npy.part")
        os.close(fd)
        try:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(self.n_slices, *EMBEDDING_SHAPE))
            try:
                os.link(tmp, self.partial_path)  # never over another process's file
            except FileExistsError:
                pass
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _finish(self) -> None:
        try:
            os.link(self.partial_path, self.final_path)
        except FileExistsError:
            pass
        except FileNotFoundError:  # finished by another process
            return
        for path in (self.partial_path, self.done_path, self.focus_path):
            path.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- one embeddings task per volume ------------------------------------------------------------------


def _claim_path(directory: Path | str, volume_sha256: str) -> Path:
    return Path(directory) / "requests" / volume_sha256


def request_claim(directory: Path | str, volume_sha256: str, *, stale_seconds: float = 600.0) -> bool:
    """Claim the right to queue the embeddings task of a volume: True for exactly one caller until the
    claim is released (`request_release`) or goes stale (not refreshed for `stale_seconds`)."""
    path = _claim_path(directory, volume_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if age <= stale_seconds:
                return False
            path.unlink(missing_ok=True)  # a lost task: take it over
            continue
        os.close(fd)
        return True
    return False


def request_claimed(directory: Path | str, volume_sha256: str, *, stale_seconds: float = 600.0) -> bool:
    """Whether a fresh claim is held (an embeddings task is queued or running)."""
    try:
        return time.time() - _claim_path(directory, volume_sha256).stat().st_mtime <= stale_seconds
    except FileNotFoundError:
        return False


def request_refresh(directory: Path | str, volume_sha256: str) -> None:
    """Keep a running task's claim fresh (called as it makes progress)."""
    path = _claim_path(directory, volume_sha256)
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def request_release(directory: Path | str, volume_sha256: str) -> None:
    _claim_path(directory, volume_sha256).unlink(missing_ok=True)


def iter_pending(store: SliceStore) -> Iterator[int]:
    """Slices to encode next, re-reading the focus before each one (a box elsewhere re-steers it)."""
    while True:
        pending = store.pending()
        if not pending or store.complete:
            return
        yield pending[0]
