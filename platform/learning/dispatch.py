"""How the learning services put work on Celery without importing tasks.py: tasks.py imports the services
(one way) and connects its tasks here when it is imported, which LearningConfig.ready() does in every
process. A service calls the sender named after the task; the message carries the job id only.
"""

from __future__ import annotations

from common.dispatch import TaskRegistry

_registry = TaskRegistry("learning.tasks", "LearningConfig.ready")
connect = _registry.connect


def adaptation_run(job_id: int) -> None:
    _registry["adaptation_run"].delay(job_id)


def pool_score(job_id: int) -> None:
    _registry["pool_score"].delay(job_id)
