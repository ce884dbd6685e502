"""The domain errors of annotation work, each with the HTTP status the API answers with.

Plain ``ApplicationError`` (a bad request: wrong shape, unknown label, ...) answers 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.exceptions import ApplicationError

if TYPE_CHECKING:
    from annotation.models import MaskVersion


class CaseLockedError(ApplicationError):
    """Someone else holds the case, or the caller no longer holds it."""

    http_status = 423


class CaseStateError(ApplicationError):
    """The case's state does not allow this (approved and frozen, under review, nothing to submit)."""

    http_status = 409


class SelfReviewError(ApplicationError):
    """A reviewer approves a case they annotated; ``extra['can_override']`` says whether they may with a
    reason (an admin)."""

    http_status = 403


class HiddenReadingError(ApplicationError):
    """Another reader's mask of a volume read twice, before a reviewer compared the two."""

    http_status = 403


class StaleVersionError(ApplicationError):
    """The client worked on a version that is no longer the head; ``extra['head']`` says which is."""

    http_status = 409

    def __init__(self, head: MaskVersion | None) -> None:
        current = "there is no version yet" if head is None else f"the head is version {head.display_number}"
        super().__init__(
            f"This case changed since you loaded it ({current}): reload it, or re-apply your edits on "
            "the head and save again.",
            extra={"head": None if head is None else {"id": head.id, "number": head.display_number}},
        )
        self.head = head


class PayloadTooLargeError(ApplicationError):
    http_status = 413


def api_exception_handler(exc, context):
    """One error shape for the whole API: ``{"message": str, "extra": dict}``. ApplicationError answers
    with its ``http_status`` (400 by default); DRF's own errors keep their status; field errors go
    under ``extra.fields``."""
    from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
    from django.core.exceptions import ValidationError as DjangoValidationError
    from django.http import Http404
    from rest_framework import exceptions
    from rest_framework.response import Response
    from rest_framework.serializers import as_serializer_error
    from rest_framework.views import exception_handler

    if isinstance(exc, ApplicationError):
        return Response({"message": exc.message, "extra": exc.extra}, status=getattr(exc, "http_status", 400))
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc.detail, (list, dict)):
        response.data = {"message": "The request is not valid.", "extra": {"fields": response.data}}
    else:
        response.data = {"message": str(exc.detail), "extra": {}}
    return response


class ModelTimeoutError(ApplicationError):
    """No model worker answered in time."""

    http_status = 504
