"""Shared helpers of the contract tests: the chain's clock, a funded job, amounts."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3

from contracts.bindings import ComputeToken, JobEscrow
from contracts.sender import Sender

FEE_BPS = 250
TOKENS = 10**18
POSTER_TOKENS = 1_000_000 * TOKENS
DAY = 24 * 3600
JOB_ID = bytes.fromhex("00" * 31 + "01")
OTHER_JOB_ID = bytes.fromhex("00" * 31 + "02")


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
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def fee(amount: int, fee_bps: int = FEE_BPS) -> int:
    return amount * fee_bps // 10_000


@dataclass(frozen=True)
class FundedJob:
    id: bytes
    poster: Sender
    amount: int
    deadline: int


def fund_job(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, job_id: bytes, amount: int, *, days: int = 1
) -> FundedJob:
    """Approve and fund `job_id` from `poster` with a deadline `days` from now."""
    deadline = now(w3) + days * DAY
    token.connect(poster).approve(escrow.address, amount)
    escrow.connect(poster).fund(job_id, amount, deadline)
    return FundedJob(job_id, poster, amount, deadline)
