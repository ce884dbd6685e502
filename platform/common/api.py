"""The base of every JSON API view (annotation.api, learning.api): one APIView per operation, session
auth with CSRF, a Django permission per view (granted per role in accounts.roles) checked on every
request, and an OpenAPI schema from each view's nested Input/Filter/OutputSerializer.

Errors come back as ``{"message": ..., "extra": {...}}`` (annotation.errors.api_exception_handler).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

from django.http import Http404
from rest_framework import status
from rest_framework.permissions import BasePermission
from rest_framework.schemas.openapi import AutoSchema
from rest_framework.views import APIView

T = TypeVar("T")


class RequiredPermission(BasePermission):
    """Signed in and holding the view's ``permission``. Anonymous requests get 403 (session auth)."""

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.has_perm(view.permission))


class ApiSchema(AutoSchema):
    """OpenAPI from the nested Input/Filter/OutputSerializer of each view, named after the view."""

    def _name(self) -> str:
        return type(self.view).__name__.removesuffix("Api")

    def get_operation_id(self, path, method) -> str:
        name = self._name()
        return name[0].lower() + name[1:]

    def get_component_name(self, serializer) -> str:
        return self._name() + type(serializer).__name__.removesuffix("Serializer")

    def get_request_serializer(self, path, method):
        cls = getattr(self.view, "InputSerializer", None)
        return cls() if cls else None

    def get_response_serializer(self, path, method):
        cls = getattr(self.view, "OutputSerializer", None)
        return cls() if cls else None

    def get_responses(self, path, method) -> dict:
        ok = str(self.view.success_status)
        return {
            ok if code in ("200", "201") else code: body
            for code, body in super().get_responses(path, method).items()
        }

    def get_filter_parameters(self, path, method) -> list[dict]:
        cls = getattr(self.view, "FilterSerializer", None)
        if cls is None:
            return []
        return [
            {"name": name, "in": "query", "required": field.required, "schema": self.map_field(field)}
            for name, field in cls().fields.items()
        ]


class Api(APIView):
    permission_classes = [RequiredPermission]
    permission: ClassVar[str]
    success_status: ClassVar[int] = status.HTTP_200_OK
    schema = ApiSchema()
    action = "call"  # not "list": DRF's schema then describes the output as one object


def get_or_404(getter: Callable[..., T | None], **kwargs) -> T:
    """What a selector finds, or 404 when it finds nothing (or nothing the caller may see)."""
    found = getter(**kwargs)
    if found is None:
        raise Http404
    return found
