"""Model fields for token amounts: unsigned 256-bit integers, exact on every database."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core import validators
from django.db import models

UINT256_MAX = 2**256 - 1
_DIGITS = 78  # len(str(2**256 - 1))


class Uint256Field(models.Field):  # type: ignore[type-arg]
    """An integer in [0, 2**256): numeric(78, 0) on PostgreSQL, zero-padded text elsewhere.

    SQLite has no exact 78-digit number type (its NUMERIC falls back to a float), so amounts are stored
    as zero-padded digits there: equality and ordering still work in SQL, arithmetic is done in Python.
    """

    description = "Unsigned 256-bit integer (token base units)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validators.append(validators.MinValueValidator(0))
        self.validators.append(validators.MaxValueValidator(UINT256_MAX))

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "postgresql":
            return f"numeric({_DIGITS}, 0)"
        return f"varchar({_DIGITS})"

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            return None
        return self.to_python(value)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if not prepared:
            value = self.get_prep_value(value)
        if value is None:
            return None
        if connection.vendor == "postgresql":
            return Decimal(value)
        return str(value).zfill(_DIGITS)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int | None:
        if value is None:
            return None
        return int(value)

    def to_python(self, value: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise validators.ValidationError("Token amounts are whole numbers of base units.")
            return int(value)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        raise validators.ValidationError(f"{value!r} is not a whole number of base units.")

    def value_to_string(self, obj: Any) -> str:
        return str(self.value_from_object(obj))
