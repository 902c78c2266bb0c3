"""The one error root of the marketplace; the API maps it to {"message", "extra"}."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A business rule refused the request; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ValidationFailed(ApplicationError):
    """Input failed validation; extra["fields"] maps each field path to its messages."""

    def __init__(self, fields: dict[str, list[str]], message: str = "Validation failed.") -> None:
        super().__init__(message, {"fields": fields})
        self.fields = fields


class NotFound(ApplicationError):
    status = 404


class Conflict(ApplicationError):
    """The object is not in a state that allows this (an illegal transition, an expired lease)."""

    status = 409


class PermissionDenied(ApplicationError):
    status = 403
