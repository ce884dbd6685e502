"""Model-assisted editing: the warm LiteMedSAM segmenter of a worker process and its files.

Voxel data never rides the broker: a worker writes its answer as a file under
``MEDIA_ROOT/interactive/`` (gzip of the 0/1 voxels in NIfTI order, the wire format of
annotation.masks), returns the path, and the web process reads it back and deletes it. Embeddings live
under ``MEDIA_ROOT/embeddings/``: the prompted slice encoded on demand by the interactive worker, the
rest by one task per volume on the ``gpu`` queue (see ml_worker.inference.slice_store).
"""

from __future__ import annotations

import gzip
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

if TYPE_CHECKING:  # the web process never imports torch: only workers load the model
    from ml_worker.inference.interactive import InteractiveSegmenter
    from ml_worker.inference.native_interactive import NativeSegmenter

_segmenter: InteractiveSegmenter | None = None
_segmenter_lock = threading.Lock()
_native: NativeSegmenter | None = None


def embeddings_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "embeddings"


def answers_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "interactive"


def segmenter() -> InteractiveSegmenter:
    """The process's segmenter, loaded on first use and kept warm (a worker serves many requests); made
    again if the media store moved (tests give each test its own)."""
    from ml_worker.inference.interactive import InteractiveSegmenter

    global _segmenter
    with _segmenter_lock:
        if _segmenter is None or _segmenter.cache.directory != embeddings_dir():
            _segmenter = InteractiveSegmenter(
                embeddings_dir=embeddings_dir(),
                cache_bytes=settings.INTERACTIVE_CACHE_BYTES,
                encoder=settings.INTERACTIVE_ENCODER,
            )
        return _segmenter


def native_segmenter() -> NativeSegmenter:
    """The process's native 3D models (projects' adapted versions), loaded on first use of each and kept
    warm; a new active version (promotion, rollback) is a new weights file, loaded at its first request."""
    from ml_worker.inference.native_interactive import NativeSegmenter

    global _native
    with _segmenter_lock:
        if _native is None:
            _native = NativeSegmenter()
        return _native


def answer_write(mask: np.ndarray) -> str:
    """Write a bool ``(I, J, K)`` mask as gzip of uint8 voxels in NIfTI order; returns its file name."""
    folder = answers_dir()
    folder.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(np.asarray(mask, np.uint8).ravel(order="F").tobytes(), compresslevel=1)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    name = f"{uuid.uuid4().hex}.gz"
    os.replace(tmp, folder / name)
    return name


def answer_take(name: str) -> bytes:
    """The gzip bytes of an answer, removing its file (each answer is read once)."""
    path = answers_dir() / Path(name).name  # a bare name: never a path out of the folder
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    return data
