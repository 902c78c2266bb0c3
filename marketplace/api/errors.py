"""Every API error has one shape: {"message": str, "extra": {...}}; validation errors list field paths."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found as django_page_not_found
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from marketplace.core.exceptions import ApplicationError


class ErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    message = serializers.CharField()
    extra = serializers.DictField()


# The error responses every API documents, by status; `error_responses(401, 404)` picks some for extend_schema.
ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; extra.fields names each bad field."),
    401: OpenApiResponse(ErrorSerializer, description="Missing or wrong credentials."),
    404: OpenApiResponse(ErrorSerializer, description="No such object for this caller."),
    409: OpenApiResponse(ErrorSerializer, description="The object's state does not allow this."),
    413: OpenApiResponse(
        ErrorSerializer, description="The body is over this endpoint's size cap (the message names it)."
    ),
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: ERRORS[code] for code in codes}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail → {"spec.matrix_size": ["..."]}."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                path = prefix or "non_field_errors"
            for sub, messages in _flatten(value, path).items():
                fields.setdefault(sub, []).extend(messages)
    elif isinstance(detail, list) and detail and all(not isinstance(d, dict | list) for d in detail):
        fields[prefix or "non_field_errors"] = [str(d) for d in detail]
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            fields.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def _form_limits(exc: Exception) -> Response | None:
    """Django's own body limits in the API's shape: DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads JSON and form bodies
    through request.body, which Django caps; multipart form fields count too), and the numbers of fields and files."""
    if isinstance(exc, RequestDataTooBig):
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = f"Request bodies (JSON, form fields) are at most {cap} bytes; this one is larger."
        return Response(
            {"message": message, "extra": {"max_bytes": cap}}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        )
    if isinstance(exc, TooManyFieldsSent):
        cap = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return Response({"message": f"A request has at most {cap} fields.", "extra": {"max_fields": cap}}, status=400)
    if isinstance(exc, TooManyFilesSent):
        cap = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return Response({"message": f"A request has at most {cap} files.", "extra": {"max_files": cap}}, status=400)
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response({"message": exc.message, "extra": exc.extra}, status=exc.status)
    limited = _form_limits(exc)
    if limited is not None:
        return limited
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"message": "Validation failed.", "extra": {"fields": _flatten(exc.detail)}}
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else "Request refused."
        response.data = {"message": message, "extra": {"code": getattr(detail, "code", exc.default_code)}}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Token"
    return response


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: under /api/ a path that matches no endpoint (say, an id that is not a UUID) answers in the API's
    error shape, as JSON; elsewhere Django's own page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"message": "Not found.", "extra": {"code": "not_found"}}, status=404)
    return django_page_not_found(request, exception or Http404())
