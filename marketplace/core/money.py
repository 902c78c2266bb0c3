"""Token amounts as text (the helper lives in contracts.units, which the node agent can import too)."""

from __future__ import annotations

from contracts.units import tokens_format, tokens_parse

__all__ = ["tokens_format", "tokens_parse"]
