"""How the learning services put work on Celery without importing tasks.py: tasks.py imports the services
(one way) and connects its tasks here when it is imported, which LearningConfig.ready() does in every
process. A service calls the sender named after the task; the message carries the job id only.
"""

from __future__ import annotations

from typing import Any

_tasks: dict[str, Any] = {}


def connect(**tasks: Any) -> None:
    """tasks.py hands in its Celery tasks by name (idempotent: a second import connects the same)."""
    _tasks.update(tasks)


def _task(name: str) -> Any:
    try:
        return _tasks[name]
    except KeyError:
        raise LookupError(
            f"learning.tasks.{name} is not connected: learning.tasks was not imported "
            "(LearningConfig.ready imports it)."
        ) from None


def adaptation_run(job_id: int) -> None:
    _task("adaptation_run").delay(job_id)


def pool_score(job_id: int) -> None:
    _task("pool_score").delay(job_id)
