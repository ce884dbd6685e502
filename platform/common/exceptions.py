"""One domain error for what a user or an outside system caused, and one for faults worth retrying."""


class ApplicationError(Exception):
    """A request that cannot be carried out as asked; ``message`` is for the person who asked."""

    def __init__(self, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class TransientError(ApplicationError):
    """A fault that may pass by itself (a PACS or broker down, a timeout): Celery tasks retry these."""
