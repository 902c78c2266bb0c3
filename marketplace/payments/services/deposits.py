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

from contracts.bindings import JobEscrow
from marketplace.core.exceptions import Conflict
from marketplace.jobs.models import Job, JobState
from marketplace.jobs.services import job_mark_funded
from marketplace.payments.models import (
    ChainCursor,
    Deposit,
    EntryKind,
)
from marketplace.payments.services.escrow import escrow_key, funding_problem, job_of_escrow_id
from marketplace.payments.services.payouts import funding_required, ledger_record, tx_hex

logger = logging.getLogger(__name__)

LOG_WINDOW = 2000


@dataclass
class SyncReport:
    deposits: int = 0
    refunds: int = 0
    funded_jobs: list[UUID] = field(default_factory=list)
    # Deposited, but not startable (terms, deadline margin or amount): the reason is the job's state reason.
    refused_jobs: list[UUID] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def chain_sync(*, w3: Web3, escrow: JobEscrow, chain_id: int, start_block: int) -> SyncReport:
    """Read JobFunded and JobRefunded events since the last processed block (less CHAIN_CONFIRMATIONS), record
    each once, and start the jobs whose escrow now covers their funding requirement."""
    report = SyncReport()
    cursor, _ = ChainCursor.objects.get_or_create(
        name="escrow-events", chain_id=chain_id, defaults={"block": max(start_block - 1, 0)}
    )
    head = w3.eth.block_number - settings.CHAIN_CONFIRMATIONS
    while cursor.block < head:
        to_block = min(head, cursor.block + LOG_WINDOW)
        window = {"from_block": cursor.block + 1, "to_block": to_block}
        for event in escrow.contract.events.JobFunded().get_logs(**window):
            _deposit_record(event, chain_id=chain_id, report=report)
        for event in escrow.contract.events.JobRefunded().get_logs(**window):
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
