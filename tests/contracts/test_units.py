"""Token amounts: base units to text and back, exactly, at every size an amount can have."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.units import tokens_format, tokens_parse

UINT256_MAX = 2**256 - 1


@pytest.mark.parametrize(
    ("base_units", "text"),
    [
        (0, "0"),
        (1, "0.000000000000000001"),
        (10**17, "0.1"),
        (10**18, "1"),
        (15 * 10**17, "1.5"),
        (10 * 10**18, "10"),
        (10**24, "1000000"),
        (123 * 10**18 + 45 * 10**15, "123.045"),
        (UINT256_MAX, "115792089237316195423570985008687907853269984665640564039457.584007913129639935"),
    ],
)
def test_it_writes_base_units_as_exact_tokens_without_trailing_zeros(base_units: int, text: str) -> None:
    assert tokens_format(base_units) == text
    assert tokens_parse(text) == base_units


@given(st.integers(min_value=0, max_value=UINT256_MAX))
def test_it_writes_what_the_old_divmod_helpers_wrote_and_reads_it_back(base_units: int) -> None:
    whole, fraction = divmod(base_units, 10**18)
    assert tokens_format(base_units) == f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")
    assert tokens_parse(tokens_format(base_units)) == base_units


@pytest.mark.parametrize("base_units", [-1, UINT256_MAX + 1])
def test_it_refuses_to_write_what_no_amount_can_be(base_units: int) -> None:
    with pytest.raises(ValueError, match="2\\*\\*256"):
        tokens_format(base_units)


@pytest.mark.parametrize(
    ("text", "base_units"),
    [("1.5", 15 * 10**17), (" 2 ", 2 * 10**18), ("0.10", 10**17), ("1e-7", 10**11), (Decimal("0.1"), 10**17)],
)
def test_it_reads_token_amounts_as_people_write_them(text: str | Decimal, base_units: int) -> None:
    assert tokens_parse(text) == base_units


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("abc", "not a token amount"),
        ("", "not a token amount"),
        ("-1", "0 or more"),
        ("NaN", "0 or more"),
        ("Infinity", "0 or more"),
        ("0.0000000000000000001", "more than 18 decimals"),
        (str(2**256), "2\\*\\*256 - 1"),
        ("1e999990", "not a token amount"),
    ],
)
def test_it_refuses_what_is_not_a_whole_number_of_base_units(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        tokens_parse(text)
