"""How the annotation services put work on Celery without importing tasks.py: tasks.py imports the
services (one way) and connects its tasks here when it is imported, which AnnotationConfig.ready() does
in every process. A service calls the sender named after the task, e.g. ``dispatch.review_seg_export(id)``;
the message carries ids only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.dispatch import TaskRegistry

if TYPE_CHECKING:
    from celery.result import AsyncResult

_registry = TaskRegistry("annotation.tasks", "AnnotationConfig.ready")
connect = _registry.connect


def review_seg_export(review_id: int) -> None:
    _registry["review_seg_export"].delay(review_id)


def volume_embeddings_compute(volume_id: int) -> None:
    _registry["volume_embeddings_compute"].delay(volume_id)


def case_interactive_segment(
    volume_id: int, request: dict, *, route: dict | None = None, expires: float
) -> AsyncResult:
    return _registry["case_interactive_segment"].apply_async(
        args=[volume_id, request, route], expires=expires
    )
