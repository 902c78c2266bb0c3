"""Payouts for accepted work and their settlement on chain, job by job; closing finished jobs' escrow.

Amounts are integers in token base units everywhere. Nothing here edits a ledger entry; every write that can
be repeated (a re-read block, a re-sent batch) is made idempotent by a unique key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from web3 import Web3

from contracts.bindings import JobEscrow
from contracts.bindings import Payout as ChainPayout
from contracts.errors import ContractRevert, TransactionFailed
from contracts.logs import in_ranges
from marketplace.jobs.models import JOB_TERMINAL, Assignment, AssignmentState, Job
from marketplace.jobs.services import job_stranded_settle
from marketplace.payments.models import (
    EntryKind,
    JobSettlement,
    LedgerEntry,
    Payout,
    PayoutState,
    SettlementStep,
)
from marketplace.payments.services.escrow import escrow_key

logger = logging.getLogger(__name__)

MAX_BATCH = 200
SETTLEMENT_RETRY_BASE = timedelta(seconds=30)
SETTLEMENT_RETRY_MAX = timedelta(hours=1)
# A job's escrow stays open while any of its replicas may still earn a payout.
REPLICA_UNSETTLED = [AssignmentState.LEASED, AssignmentState.RUNNING, AssignmentState.SUBMITTED]


def fee_of(amount: int, fee_bps: int) -> int:
    """The treasury's fee on one payout, rounded down exactly as JobEscrow.release computes it."""
    return amount * fee_bps // 10_000


def funding_for(*, price_per_replica: int, replicas: int, fee_bps: int) -> int:
    """Tokens `replicas` paid replicas cost in escrow: each one's price plus the fee the contract takes on it."""
    return replicas * (price_per_replica + fee_of(price_per_replica, fee_bps))


def funding_required(*, job: Job, fee_bps: int) -> int:
    """Tokens a job must hold in escrow before it runs: every replica's price plus the fee on it."""
    return funding_for(
        price_per_replica=job.price_per_replica, replicas=job.task_count * job.replication, fee_bps=fee_bps
    )


# Payouts ---------------------------------------------------------------------------------------------------


def payout_create(*, assignment_id: UUID) -> Payout | None:
    """The payout an accepted assignment earns (idempotent: the assignment id is its key). A task pays at most
    `replication` replicas: a tie-breaking extra replica is paid only in place of one that was rejected."""
    assignment = Assignment.objects.select_related("task__job", "node").get(id=assignment_id)
    if assignment.state != AssignmentState.ACCEPTED:
        return None
    job = assignment.task.job
    existing = Payout.objects.filter(assignment_id=assignment_id).first()
    if existing is not None:
        return existing
    paid = Payout.objects.filter(assignment__task_id=assignment.task_id).count()
    if paid >= job.replication:
        logger.info("assignment %s accepted beyond the job's replication: not paid", assignment_id)
        return None
    try:
        with transaction.atomic():
            return Payout.objects.create(
                assignment=assignment,
                job=job,
                node=assignment.node,
                payee=Web3.to_checksum_address(assignment.node.wallet_address),
                amount=job.price_per_replica,
                fee=0,
            )
    except IntegrityError:
        return Payout.objects.filter(assignment_id=assignment_id).first()


def payout_on_accept(assignment_id: UUID) -> None:
    """The assignment_accepted hook's receiver: runs inside the accepting transaction."""
    payout_create(assignment_id=assignment_id)


def ledger_record(*, kind: str, job_id: UUID, account: str, amount: int, key: str, tx_hash: str = "") -> None:
    if amount <= 0:
        return
    LedgerEntry.objects.get_or_create(
        idempotency_key=key,
        defaults={"kind": kind, "job_id": job_id, "account": account, "amount": amount, "tx_hash": tx_hash},
    )


def _settled(payouts: Iterable[Payout], *, tx_hash: str, block: int | None, treasury: str, fee_bps: int) -> None:
    now = timezone.now()
    for payout in payouts:
        # The fee is the contract's, at the fee rate in force when it paid.
        payout.fee = fee_of(payout.amount, fee_bps)
        Payout.objects.filter(id=payout.id).exclude(state=PayoutState.SETTLED).update(
            state=PayoutState.SETTLED, tx_hash=tx_hash, block=block, settled_at=now, fee=payout.fee
        )
        ledger_record(
            kind=EntryKind.PAYOUT,
            job_id=payout.job_id,
            account=payout.payee,
            amount=payout.amount,
            key=f"payout:{payout.id}",
            tx_hash=tx_hash,
        )
        ledger_record(
            kind=EntryKind.FEE,
            job_id=payout.job_id,
            account=treasury,
            amount=payout.fee,
            key=f"fee:{payout.id}",
            tx_hash=tx_hash,
        )


def _release_tx_of(w3: Web3, escrow: JobEscrow, job_id: UUID, index: int, from_block: int) -> tuple[str, int | None]:
    """Which release() transaction paid payout `index` of a job: the PayoutsReleased events of the job, then
    each one's calldata (the per-payout detail lives only there)."""
    released = escrow.contract.events.PayoutsReleased()
    of_job = {"jobId": escrow_key(job_id)}
    windows = in_ranges(
        lambda lo, hi: released.get_logs(from_block=lo, to_block=hi, argument_filters=of_job),
        from_block=from_block,
        to_block=w3.eth.block_number,
        max_range=settings.LOG_BLOCK_RANGE,
    )
    for _lo, _hi, events in windows:
        for event in events:
            tx = w3.eth.get_transaction(event["transactionHash"])
            _, args = escrow.contract.decode_function_input(tx["input"])
            if index in args["payoutIndexes"]:
                return "0x" + bytes(event["transactionHash"]).hex().removeprefix("0x"), event["blockNumber"]
    return "", None


@dataclass
class SettleReport:
    recovered: int = 0
    settled: int = 0
    transactions: list[str] = field(default_factory=list)
    refused: list[UUID] = field(default_factory=list)


def payouts_recover(*, w3: Web3, escrow: JobEscrow, from_block: int, report: SettleReport) -> None:
    """After a crash: a payout left `sending` was either paid on chain (record it) or not (send it again,
    with the same index, which the contract would skip had it been used)."""
    treasury, fee_bps = escrow.treasury(), escrow.fee_bps()
    for payout in Payout.objects.filter(state=PayoutState.SENDING).order_by("job_id", "payout_index"):
        assert payout.payout_index is not None
        if escrow.payout_used(escrow_key(payout.job_id), payout.payout_index):
            tx_hash, block = _release_tx_of(w3, escrow, payout.job_id, payout.payout_index, from_block)
            with transaction.atomic():
                _settled([payout], tx_hash=tx_hash, block=block, treasury=treasury, fee_bps=fee_bps)
            report.recovered += 1
            logger.warning("payout %s was paid on chain before a crash (tx %s): recorded", payout.id, tx_hash)
        else:
            Payout.objects.filter(id=payout.id, state=PayoutState.SENDING).update(state=PayoutState.PENDING)


def _number(job_id: UUID, limit: int) -> list[Payout]:
    """Give a job's pending payouts their per-job indexes and mark them `sending` (before anything is sent)."""
    with transaction.atomic():
        batch = list(
            Payout.objects.select_for_update()
            .filter(job_id=job_id, state=PayoutState.PENDING)
            .order_by("payout_index", "created_at")[:limit]
        )
        highest = Payout.objects.filter(job_id=job_id).aggregate(top=Max("payout_index"))["top"]
        next_index = -1 if highest is None else highest
        for payout in batch:
            if payout.payout_index is None:
                next_index += 1
                payout.payout_index = next_index
            payout.state = PayoutState.SENDING
            payout.save(update_fields=["payout_index", "state"])
    return batch


def payouts_settle(
    *, w3: Web3, escrow: JobEscrow, from_block: int, max_batch: int = MAX_BATCH, now: datetime | None = None
) -> SettleReport:
    """Pay every pending payout on chain, in release() batches per job. Only the settlement worker calls this
    (one process owns the operator's nonce and numbers the payouts). Each job settles on its own: a release
    the escrow refuses puts that job's batch back, records the reason and when to try again, and the loop goes
    on with the next job."""
    now = now or timezone.now()
    report = SettleReport()
    payouts_recover(w3=w3, escrow=escrow, from_block=from_block, report=report)
    treasury, fee_bps = escrow.treasury(), escrow.fee_bps()
    waiting = JobSettlement.objects.filter(retry_at__gt=now).values_list("job_id", flat=True)
    job_ids = list(
        Payout.objects.filter(state=PayoutState.PENDING)
        .exclude(job_id__in=waiting)
        .values_list("job_id", flat=True)
        .distinct()
        .order_by("job_id")
    )
    for job_id in job_ids:
        key = escrow_key(job_id)
        while batch := _number(job_id, max_batch):
            try:
                released = escrow.release(key, [ChainPayout(p.payout_index or 0, p.payee, p.amount) for p in batch])
            except (ContractRevert, TransactionFailed) as exc:
                # Back to pending with their indexes (never used on chain: the whole batch reverted).
                Payout.objects.filter(id__in=[p.id for p in batch], state=PayoutState.SENDING).update(
                    state=PayoutState.PENDING
                )
                settlement_refused(job_id=job_id, step=SettlementStep.RELEASE, error=exc, now=now)
                report.refused.append(job_id)
                break
            tx_hash = "0x" + bytes(released.receipt["transactionHash"]).hex().removeprefix("0x")
            with transaction.atomic():
                _settled(
                    batch, tx_hash=tx_hash, block=released.receipt["blockNumber"], treasury=treasury, fee_bps=fee_bps
                )
                settlement_succeeded(job_id=job_id, step=SettlementStep.RELEASE)
            report.settled += len(batch)
            report.transactions.append(tx_hash)
            logger.info("job %s: %d payouts released in %s (%d paid now)", job_id, len(batch), tx_hash, released.count)
    return report


def settlement_retry_delay(refusals: int) -> timedelta:
    """Backoff after the n-th refusal in a row: 30 s, 60 s, 120 s, … at most an hour."""
    return min(SETTLEMENT_RETRY_BASE * 2 ** max(refusals - 1, 0), SETTLEMENT_RETRY_MAX)


def settlement_refused(*, job_id: UUID, step: str, error: Exception, now: datetime | None = None) -> JobSettlement:
    """Record that the escrow refused a job's release or close: its decoded reason and when to try again."""
    now = now or timezone.now()
    with transaction.atomic():
        settlement, _ = JobSettlement.objects.select_for_update().get_or_create(job_id=job_id)
        settlement.refusals = settlement.refusals + 1 if settlement.refused_step == step else 1
        settlement.refused_step = step
        settlement.last_error = f"{type(error).__name__}: {error}"[:2000]
        settlement.refused_at = now
        settlement.retry_at = now + settlement_retry_delay(settlement.refusals)
        settlement.save()
    logger.warning(
        "job %s: the escrow refused %s (%d in a row), next try at %s: %s",
        job_id,
        step,
        settlement.refusals,
        settlement.retry_at.isoformat(),
        settlement.last_error,
    )
    return settlement


def settlement_succeeded(*, job_id: UUID, step: str, **fields: Any) -> None:
    """A release or close went through: clear that step's refusals (others stay on record)."""
    JobSettlement.objects.get_or_create(job_id=job_id)
    JobSettlement.objects.filter(job_id=job_id, refused_step=step).update(
        refusals=0, refused_step="", last_error="", refused_at=None, retry_at=None
    )
    if fields:
        JobSettlement.objects.filter(job_id=job_id).update(**fields)


def tx_hex(event: Any) -> str:
    return "0x" + bytes(event["transactionHash"]).hex().removeprefix("0x")


def jobs_close(*, escrow: JobEscrow, now: datetime | None = None) -> list[UUID]:
    """Close the escrow of every finished job whose payouts are all settled and none of whose replicas is still
    live (leased, running, or submitted and not yet judged: it may still be owed a payout), so its poster can
    take the rest. A refused close is recorded on that job alone and retried with backoff."""
    now = now or timezone.now()
    closed: list[UUID] = []
    finished = (
        Job.objects.filter(state__in=JOB_TERMINAL, deposits__isnull=False)
        .exclude(settlement__closed_at__isnull=False)
        .exclude(settlement__retry_at__gt=now)
        .exclude(payouts__state__in=[PayoutState.PENDING, PayoutState.SENDING])
        .exclude(tasks__assignments__state__in=REPLICA_UNSETTLED)
        .distinct()
    )
    # Finished jobs still waiting on a verdict for submitted replicas: ask for it (it may pay them).
    stranded = (
        Job.objects.filter(
            state__in=JOB_TERMINAL, deposits__isnull=False, tasks__assignments__state=AssignmentState.SUBMITTED
        )
        .exclude(settlement__closed_at__isnull=False)
        .values_list("id", flat=True)
        .distinct()
    )
    for job_id in list(stranded):
        job_stranded_settle(job_id=job_id)
    for job in finished:
        key = escrow_key(job.id)
        if escrow.job_of(key).closed:
            settlement_succeeded(job_id=job.id, step=SettlementStep.CLOSE, closed_at=now)
            continue
        try:
            receipt = escrow.close(key)
        except (ContractRevert, TransactionFailed) as exc:
            settlement_refused(job_id=job.id, step=SettlementStep.CLOSE, error=exc, now=now)
            continue
        settlement_succeeded(job_id=job.id, step=SettlementStep.CLOSE, closed_at=now, close_tx=tx_hex(receipt))
        closed.append(job.id)
        logger.info("job %s closed on chain: its poster may refund the rest", job.id)
    return closed


def settlement_problems() -> list[JobSettlement]:
    """Jobs whose last release or close the escrow refused, oldest refusal first."""
    return list(JobSettlement.objects.filter(refusals__gt=0).order_by("refused_at"))
