"""Template filters of the dashboard."""

from __future__ import annotations

from typing import Any

from django import template

from contracts.units import tokens_format

register = template.Library()


@register.filter
def tokens(base_units: Any) -> str:
    """Token base units (18 decimals) as HWC: 1500000000000000000 → 1.5; "–" for what is not an amount."""
    try:
        return tokens_format(int(base_units))
    except (TypeError, ValueError):
        return "–"
