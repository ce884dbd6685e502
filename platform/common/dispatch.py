"""The registry behind each app's ``dispatch.py``: how services put work on Celery without importing
their app's tasks.py. tasks.py imports the services (one way) and connects its tasks to its app's registry
when it is imported, which the app's ``AppConfig.ready()`` does in every process."""

from __future__ import annotations

from typing import Any


class TaskRegistry:
    """The Celery tasks of one app's tasks.py, by name.

    Args:
        module: the tasks module, for the message when a task is missing (e.g. ``"learning.tasks"``).
        imported_by: what imports it (e.g. ``"LearningConfig.ready"``).
    """

    def __init__(self, module: str, imported_by: str) -> None:
        self.module, self.imported_by = module, imported_by
        self._tasks: dict[str, Any] = {}

    def connect(self, **tasks: Any) -> None:
        """tasks.py hands in its Celery tasks by name (idempotent: a second import connects the same)."""
        self._tasks.update(tasks)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def __getitem__(self, name: str) -> Any:
        try:
            return self._tasks[name]
        except KeyError:
            raise LookupError(
                f"{self.module}.{name} is not connected: {self.module} was not imported "
                f"({self.imported_by} imports it)."
            ) from None
