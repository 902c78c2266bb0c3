"""Token amounts: integer base units (18 decimals, as ether has wei) in code, exact decimal text for people. The one
helper for both: the marketplace, the node agent and the scripts format and parse amounts here."""

from __future__ import annotations

from decimal import Decimal, DecimalException, localcontext

from web3 import Web3

# ComputeToken has 18 decimals, so ether's wei unit converts it exactly.
_UNIT = "ether"


def tokens_format(base_units: int) -> str:
    """Base units as a token amount, exact and without trailing zeros: 15 * 10**17 → "1.5", 1 →
    "0.000000000000000001", 0 → "0". ValueError outside 0 … 2**256 - 1."""
    amount = Web3.from_wei(int(base_units), _UNIT)
    # "f" never writes an exponent (from_wei(1) is Decimal("1E-18")); from_wei(0) is the int 0, written "0.000000".
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def tokens_parse(text: str | Decimal) -> int:
    """A token amount ("1.5", "100", Decimal("0.1")) in base units. ValueError if it is not a number, is negative,
    has more than 18 decimals (finer than one base unit: never rounded away) or exceeds 2**256 - 1 base units."""
    try:
        amount = text if isinstance(text, Decimal) else Decimal(str(text).strip())
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{text!r} is not a number of tokens (0 or more)")
        # Digits below 10**-18 are a fraction of a base unit unless they are zeros; 2**256 has 78 digits, and the
        # default precision (28) would round them.
        with localcontext(prec=100):
            if amount != amount.quantize(Decimal("1e-18")):
                raise ValueError(f"{text!r} has more than 18 decimals")
        return int(Web3.to_wei(amount, _UNIT))
    except DecimalException:
        raise ValueError(f"{text!r} is not a token amount (a number, at most 2**256 - 1 base units)") from None
