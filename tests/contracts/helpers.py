"""Shared helpers of the contract tests: the chain's clock, poster-bound job ids, a funded job, amounts."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3
from web3.types import RPCEndpoint

from contracts.bindings import ComputeToken, JobEscrow, escrow_job_id
from contracts.sender import Sender

FEE_BPS = 250
TOKENS = 10**18
POSTER_TOKENS = 1_000_000 * TOKENS
DAY = 24 * 3600
# The terms of the `job` fixture: up to 1,000 payouts of at most 1,000 tokens each (its whole funding).
MAX_PAYOUTS = 1_000
MAX_PAYOUT = 1_000 * TOKENS


def job_id(poster: Sender | str, number: int = 1) -> bytes:
    """The escrow id of `poster`'s job `number`: the poster's address, then `number` in the 12-byte salt."""
    address = poster if isinstance(poster, str) else poster.address
    return escrow_job_id(address, number.to_bytes(12, "big"))


@dataclass(frozen=True)
class Actors:
    admin: Sender
    operator: Sender
    poster: Sender
    other_poster: Sender
    node: Sender
    other_node: Sender
    stranger: Sender
    treasury: Sender

    def all(self) -> list[Sender]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def now(w3: Web3) -> int:
    """The latest block's timestamp."""
    return int(w3.eth.get_block("latest")["timestamp"])


def advance_time(w3: Web3, seconds: int) -> None:
    """Move the chain's clock forward and mine a block at the new time."""
    w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
    w3.provider.make_request(RPCEndpoint("evm_mine"), [])


def fee(amount: int, fee_bps: int = FEE_BPS) -> int:
    return amount * fee_bps // 10_000


@dataclass(frozen=True)
class FundedJob:
    id: bytes
    poster: Sender
    amount: int
    deadline: int
    max_payouts: int
    max_payout: int


def fund_job(
    w3: Web3,
    token: ComputeToken,
    escrow: JobEscrow,
    poster: Sender,
    key: bytes,
    amount: int,
    *,
    days: int = 1,
    max_payouts: int = MAX_PAYOUTS,
    max_payout: int = MAX_PAYOUT,
) -> FundedJob:
    """Approve and fund the job `key` from `poster` with a deadline `days` from now, under the given terms."""
    deadline = now(w3) + days * DAY
    token.connect(poster).approve(escrow.address, amount)
    escrow.connect(poster).fund(key, amount, deadline, max_payouts=max_payouts, max_payout=max_payout)
    return FundedJob(key, poster, amount, deadline, max_payouts, max_payout)
