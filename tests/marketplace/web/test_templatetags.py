"""The dashboard's `tokens` filter: amounts as HWC, and a dash for whatever is not an amount."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from marketplace.web.templatetags.hashwork import tokens


@pytest.mark.parametrize(
    ("value", "shown"),
    [(15 * 10**17, "1.5"), ("2000000000000000000", "2"), (Decimal(1), "0.000000000000000001"), (0, "0")],
)
def test_it_shows_base_units_as_hwc(value: Any, shown: str) -> None:
    assert tokens(value) == shown


@pytest.mark.parametrize("value", [None, "", "abc", -1, 2**256])
def test_it_shows_a_dash_for_what_is_not_an_amount(value: Any) -> None:
    assert tokens(value) == "–"
