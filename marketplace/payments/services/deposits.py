"""Deposits read from the chain (JobFunded, JobRefunded): recorded once each; jobs start once funded.

Amounts are integers in token base units everywhere. Nothing here edits a ledger entry; every write that can
be repeated (a re-read block, a re-sent batch) is made idempotent by a unique key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from web3 import Web3
from web3.exceptions import TransactionNotFound

from contracts.bindings import JobEscrow
from contracts.logs import in_ranges
from marketplace.core.exceptions import Conflict
from marketplace.jobs.models import Job, JobState
from marketplace.jobs.services import job_mark_funded
from marketplace.payments.models import (
    ChainCursor,
    Deposit,
    EntryKind,
    Payout,
    PayoutState,
)
from marketplace.payments.services.escrow import escrow_key, funding_problem, job_of_escrow_id
from marketplace.payments.services.payouts import funding_required, ledger_record, tx_hex

logger = logging.getLogger(__name__)


@dataclass
class SyncReport:
    deposits: int = 0
    refunds: int = 0
    funded_jobs: list[UUID] = field(default_factory=list)
    # Deposited, but not startable (terms, deadline margin or amount): the reason is the job's state reason.
    refused_jobs: list[UUID] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def chain_sync(*, w3: Web3, escrow: JobEscrow, chain_id: int, start_block: int) -> SyncReport:
    """Read JobFunded and JobRefunded events since the last processed block (less CHAIN_CONFIRMATIONS), at most
    LOG_BLOCK_RANGE blocks per eth_getLogs call (halved while the provider refuses the range), record each once,
    and start the jobs whose escrow now covers their funding requirement."""
    report = SyncReport()
    cursor, _ = ChainCursor.objects.get_or_create(
        name="escrow-events", chain_id=chain_id, defaults={"block": max(start_block - 1, 0)}
    )
    head = w3.eth.block_number - settings.CHAIN_CONFIRMATIONS
    events = escrow.contract.events

    def fetch(lo: int, hi: int) -> tuple[Any, Any]:
        window = {"from_block": lo, "to_block": hi}
        return events.JobFunded().get_logs(**window), events.JobRefunded().get_logs(**window)

    windows = in_ranges(fetch, from_block=cursor.block + 1, to_block=head, max_range=settings.LOG_BLOCK_RANGE)
    for _lo, to_block, (funded, refunded) in windows:
        for event in funded:
            _deposit_record(event, chain_id=chain_id, report=report)
        for event in refunded:
            job_id = job_of_escrow_id(event["args"]["jobId"])
            if job_id is not None:
                ledger_record(
                    kind=EntryKind.REFUND,
                    job_id=job_id,
                    account=event["args"]["poster"],
                    amount=event["args"]["amount"],
                    key=f"refund:{chain_id}:{tx_hex(event)}:{event['logIndex']}",
                    tx_hash=tx_hex(event),
                )
                report.refunds += 1
        # The cursor moves after each window: a crash re-reads at most one window (recording is idempotent).
        ChainCursor.objects.filter(name=cursor.name).update(block=to_block)
        cursor.block = to_block
    fee_bps = escrow.fee_bps()
    for job in Job.objects.filter(state=JobState.DRAFT, deposits__isnull=False).distinct():
        on_chain = escrow.job_of(escrow_key(job.id))
        problem = funding_problem(job=job, on_chain=on_chain, required=funding_required(job=job, fee_bps=fee_bps))
        if problem is not None:
            # The job page and the API show it (the job's state reason) until a deposit fixes it.
            if (
                Job.objects.filter(id=job.id, state=JobState.DRAFT)
                .exclude(state_reason=problem)
                .update(state_reason=problem)
            ):
                logger.warning("job %s is not started: %s", job.id, problem)
            report.refused_jobs.append(job.id)
            continue
        try:
            job_mark_funded(job_id=job.id, reason=f"escrow holds {on_chain.remaining} base units")
        except Conflict as exc:
            # Funded but still missing uploads (a render job's assets): it starts once they are there.
            logger.info("job %s is funded but not ready: %s", job.id, exc.message)
            continue
        report.funded_jobs.append(job.id)
    return report


def _deposit_record(event: Any, *, chain_id: int, report: SyncReport) -> None:
    args = event["args"]
    job_id = job_of_escrow_id(args["jobId"])
    if job_id is None:
        # Money sent to an id the marketplace never issued (or not bound to any job's funding wallet): it stays
        # the funder's, who can refund it after the deadline; nothing is recorded against any job.
        report.ignored.append(f"{tx_hex(event)}: job id 0x{bytes(args['jobId']).hex()} is not a marketplace job")
        logger.warning("deposit %s for an unknown job id ignored", tx_hex(event))
        return
    with transaction.atomic():
        deposit, created = Deposit.objects.get_or_create(
            chain_id=chain_id,
            tx_hash=tx_hex(event),
            log_index=event["logIndex"],
            defaults={
                "job_id": job_id,
                "block": event["blockNumber"],
                "funder": args["poster"],
                "amount": args["amount"],
            },
        )
        ledger_record(
            kind=EntryKind.DEPOSIT,
            job_id=job_id,
            account=args["poster"],
            amount=args["amount"],
            key=f"deposit:{chain_id}:{deposit.tx_hash}:{deposit.log_index}",
            tx_hash=deposit.tx_hash,
        )
    if created:
        report.deposits += 1


def chain_record_problem(*, w3: Web3, escrow_address: str | None = None) -> str | None:
    """Why the chain of `w3` is not the one this database recorded money on, or None when it is (or when the
    database recorded none). It is not when the database read another chain id, read further than this chain's
    head, or recorded a deposit or a settled payout whose transaction is not in this chain's blocks (the chain was
    reset, its state deleted or an older one restored), or when the deployment's escrow has no code on it. Reading
    on would make the ledger disagree with the chain on every recorded job."""
    chain_id = w3.eth.chain_id
    other = ChainCursor.objects.exclude(chain_id=chain_id).first()
    if other is not None:
        return f"the database has read chain {other.chain_id}, and this chain is {chain_id}"
    cursor = ChainCursor.objects.filter(chain_id=chain_id).order_by("-block").first()
    head = w3.eth.block_number
    if cursor is not None and cursor.block > head:
        return f"the database has read this chain up to block {cursor.block}, but its latest block is {head}"
    recorded: list[tuple[str, str, int | None]] = []
    deposit = Deposit.objects.filter(chain_id=chain_id).order_by("-block").first()
    if deposit is not None:
        recorded.append((f"deposit to job {deposit.job_id}", deposit.tx_hash, deposit.block))
    payout = Payout.objects.filter(state=PayoutState.SETTLED).exclude(tx_hash="").order_by("-block").first()
    if payout is not None:
        recorded.append((f"payout of job {payout.job_id}", payout.tx_hash, payout.block))
    for what, tx_hash, block in recorded:
        try:
            mined = w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
        except TransactionNotFound:
            return f"the {what} in transaction {tx_hash} (block {block}) is not on this chain"
        if block is not None and mined != block:
            return f"the {what} in transaction {tx_hash} is in block {mined} of this chain, not block {block}"
    if escrow_address and (cursor is not None or recorded) and not w3.eth.get_code(escrow_address):
        return f"the escrow contract {escrow_address} has no code on this chain"
    return None
