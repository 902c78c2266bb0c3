"""Template filters of the dashboard."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def tokens(base_units: Any) -> str:
    """Token base units (18 decimals) as HWC: 1500000000000000000 → 1.5."""
    try:
        whole, fraction = divmod(int(base_units), 10**18)
    except (TypeError, ValueError):
        return "–"
    return f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")
