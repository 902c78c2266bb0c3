"""Serializer fields for token amounts: decimal strings on the wire, so JavaScript loses no digits."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.core.fields import UINT256_MAX


@extend_schema_field({"type": "string", "pattern": "^[0-9]{1,78}$", "example": "1000000000000000000"})
class TokenAmountField(serializers.Field):  # type: ignore[type-arg]
    default_error_messages = {
        "invalid": "Must be a whole number of token base units, as a string or an integer.",
        "range": "Must be between 0 and 2**256 - 1.",
    }

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("invalid")
        text = str(data).strip()
        if not text.isdigit() or len(text) > 78:
            self.fail("invalid")
        value = int(text)
        if value > UINT256_MAX:
            self.fail("range")
        return value

    def to_representation(self, value: int) -> str:
        return str(value)
