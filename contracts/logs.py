"""Read chain logs in bounded block ranges: JSON-RPC providers cap eth_getLogs (often at 2 000 or 10 000 blocks,
or by the size of the answer) and refuse a wider call; a refused range is halved and the same blocks asked again.

Each provider words its refusal differently; the ones matched here (`is_range_refusal`):
- geth, Erigon: "exceed maximum block range: 5000", "query exceeds max block range 1000"
- Alchemy: "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range…"
- Infura: "query returned more than 10000 results"
- QuickNode: "eth_getLogs is limited to a 10,000 range"
- Ankr, BlastAPI and others: "block range is too wide", "Block range limit exceeded", "range too large"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from web3.exceptions import Web3RPCError

T = TypeVar("T")

_RANGE_REFUSAL = re.compile(
    r"block range|range (is )?too (large|wide|big)|exceeds? (the )?(max|limit)|max(imum)? (block )?range"
    r"|more than \d+ (results|logs|blocks)|too many (results|logs|blocks)|response size|limited to",
    re.IGNORECASE,
)


def is_range_refusal(exc: Exception) -> bool:
    """Whether a failed eth_getLogs says its block range (or its answer) was too large."""
    return isinstance(exc, Web3RPCError | ValueError) and bool(_RANGE_REFUSAL.search(str(exc)))


def in_ranges(
    fetch: Callable[[int, int], T], *, from_block: int, to_block: int, max_range: int
) -> Iterator[tuple[int, int, T]]:
    """`fetch(lo, hi)` over consecutive windows of at most `max_range` blocks (lo and hi included) from
    `from_block` to `to_block`, in order, yielding (lo, hi, what it returned). A window the provider refuses as too
    large is halved and asked again, down to one block (then the refusal is raised); the smaller span is kept for
    the windows after it. Any other error is raised at once: the caller has every window before it."""
    if max_range < 1:
        raise ValueError(f"max_range must be at least 1 block, not {max_range}")
    span = max_range
    lo = from_block
    while lo <= to_block:
        hi = min(to_block, lo + span - 1)
        try:
            result = fetch(lo, hi)
        except (Web3RPCError, ValueError) as exc:
            if span > 1 and is_range_refusal(exc):
                span = max(1, (hi - lo + 1) // 2)
                continue
            raise
        yield lo, hi, result
        lo = hi + 1
