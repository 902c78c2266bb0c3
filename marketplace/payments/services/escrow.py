"""A job's account in the escrow: its poster-bound id, the terms it must be funded with, and whether a deposit
lets the job start.

The chain enforces the rules a poster could otherwise be cheated by: only the wallet in an id's high 20 bytes
may fund it first (nobody can take a poster's id), and the terms fixed at funding (at most `max_payouts`
payouts of at most `max_payout` each) bound what even the operator key can release. The marketplace checks the
rest before it starts a job: the deposit covers the job, its terms are the job's, and its on-chain deadline
leaves a settlement margin after the job's own deadline, so a poster cannot refund before the work is paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from web3 import Web3

from contracts.bindings import Job as ChainJob
from contracts.bindings import escrow_job_id
from marketplace.core.exceptions import Conflict, NotFound, ValidationFailed
from marketplace.jobs.models import Job
from marketplace.payments.models import Deposit, JobSettlement


@dataclass(frozen=True)
class Terms:
    """What a job's escrow account must allow: one payout per paid replica, each at most the replica's price."""

    max_payouts: int
    max_payout: int


def funding_terms(job: Job) -> Terms:
    # A tie-break replica is paid only in place of a rejected one (payout_create), so payouts never exceed this.
    return Terms(max_payouts=job.task_count * job.replication, max_payout=job.price_per_replica)


def settlement_margin() -> timedelta:
    return timedelta(hours=float(settings.HASHWORK["ESCROW_SETTLEMENT_MARGIN_HOURS"]))


def escrow_deadline_min(job: Job) -> int:
    """The earliest on-chain deadline (unix seconds) a deposit for `job` may have: the job's deadline plus the
    settlement margin, so every payout can settle before the poster may refund."""
    return int((job.deadline + settlement_margin()).timestamp())


def escrow_id_for(*, job_id: UUID, wallet: str) -> bytes:
    """The escrow id of `job_id` when funded from `wallet`."""
    return escrow_job_id(wallet, job_id.bytes[:12])


def escrow_bind(*, job_id: UUID, wallet: str) -> JobSettlement:
    """Bind a job's escrow id to the poster's funding wallet. Rebinding is allowed until a deposit is seen (then
    the id is fixed: the money is there). A job started without escrow money (dev funding) can be bound and funded
    later: its payouts wait for it."""
    if not isinstance(wallet, str) or not Web3.is_address(wallet):
        raise ValidationFailed({"wallet": ["Must be a 0x-prefixed 20-byte Ethereum address."]})
    wallet = Web3.to_checksum_address(wallet)
    escrow_id = "0x" + escrow_id_for(job_id=job_id, wallet=wallet).hex()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id).first()
        if job is None:
            raise NotFound("No such job.")
        settlement, _ = JobSettlement.objects.select_for_update().get_or_create(job_id=job_id)
        if settlement.escrow_id == escrow_id:
            return settlement
        if Deposit.objects.filter(job_id=job_id).exists():
            raise Conflict(
                f"This job's escrow id is bound to {settlement.poster_wallet}, which has funded it: fund it from "
                "that wallet.",
                {"wallet": settlement.poster_wallet, "escrow_id": settlement.escrow_id},
            )
        settlement.escrow_id = escrow_id
        settlement.poster_wallet = wallet
        settlement.save(update_fields=["escrow_id", "poster_wallet", "updated_at"])
    return settlement


def escrow_key(job_id: UUID) -> bytes:
    """The escrow id a job was bound to (every job with a deposit has one)."""
    escrow_id = JobSettlement.objects.filter(job_id=job_id).values_list("escrow_id", flat=True).first()
    if not escrow_id:
        raise LookupError(f"job {job_id} has no escrow id: its poster has not chosen a funding wallet")
    return bytes.fromhex(escrow_id.removeprefix("0x"))


def job_of_escrow_id(raw: bytes) -> UUID | None:
    """The job an escrow id was bound to, or None for an id the marketplace never issued."""
    if len(raw) != 32:
        return None
    return JobSettlement.objects.filter(escrow_id="0x" + bytes(raw).hex()).values_list("job_id", flat=True).first()


def funding_problem(*, job: Job, on_chain: ChainJob, required: int) -> str | None:
    """Why a deposit does not let the job start yet, with what to do; None when it does."""
    terms = funding_terms(job)
    if (on_chain.max_payouts, on_chain.max_payout) != (terms.max_payouts, terms.max_payout):
        return (
            f"The escrow was funded with terms of {on_chain.max_payouts} payouts of at most {on_chain.max_payout} "
            f"base units, but this job needs {terms.max_payouts} payouts of at most {terms.max_payout}. Terms are "
            "fixed at the first deposit: refund it after its deadline and post the job again."
        )
    earliest = escrow_deadline_min(job)
    if on_chain.deadline < earliest:
        return (
            f"The escrow's deadline ({on_chain.deadline}) leaves no settlement margin: it must be at least "
            f"{earliest} (the job's deadline plus {settlement_margin()}). Top it up (any amount) with that deadline."
        )
    if on_chain.remaining < required:
        return (
            f"The escrow holds {on_chain.remaining} base units; the job needs {required} (every replica's price "
            "plus the fee). Top it up with the difference."
        )
    return None
