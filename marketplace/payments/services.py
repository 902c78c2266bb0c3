"""Writes for money: deposits from the chain, payouts for accepted work, settlement, closing, reconciliation.

Amounts are integers in token base units everywhere. Nothing here edits a ledger entry; every write that can
be repeated (a re-read block, a re-sent batch) is made idempotent by a unique key.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from web3 import Web3

from contracts.bindings import JobEscrow, job_key
from contracts.bindings import Payout as ChainPayout
from marketplace.core.exceptions import Conflict
from marketplace.jobs.models import JOB_TERMINAL, Assignment, AssignmentState, Job, JobState
from marketplace.jobs.services import job_mark_funded
from marketplace.payments.models import ChainCursor, Deposit, EntryKind, LedgerEntry, Payout, PayoutState

logger = logging.getLogger(__name__)

MAX_BATCH = 200
LOG_WINDOW = 2000


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


def job_from_key(raw: bytes) -> UUID | None:
    """The marketplace job a bytes32 escrow id names, or None for an id the marketplace never issued."""
    if len(raw) != 32 or any(raw[:16]):
        return None
    return uuid.UUID(bytes=bytes(raw[16:]))


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


def _ledger(*, kind: str, job_id: UUID, account: str, amount: int, key: str, tx_hash: str = "") -> None:
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
        _ledger(
            kind=EntryKind.PAYOUT,
            job_id=payout.job_id,
            account=payout.payee,
            amount=payout.amount,
            key=f"payout:{payout.id}",
            tx_hash=tx_hash,
        )
        _ledger(
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
    events = escrow.contract.events.PayoutsReleased().get_logs(
        from_block=from_block, argument_filters={"jobId": job_key(job_id)}
    )
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


def payouts_recover(*, w3: Web3, escrow: JobEscrow, from_block: int, report: SettleReport) -> None:
    """After a crash: a payout left `sending` was either paid on chain (record it) or not (send it again,
    with the same index, which the contract would skip had it been used)."""
    treasury, fee_bps = escrow.treasury(), escrow.fee_bps()
    for payout in Payout.objects.filter(state=PayoutState.SENDING).order_by("job_id", "payout_index"):
        assert payout.payout_index is not None
        if escrow.payout_used(payout.job_id, payout.payout_index):
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


def payouts_settle(*, w3: Web3, escrow: JobEscrow, from_block: int, max_batch: int = MAX_BATCH) -> SettleReport:
    """Pay every pending payout on chain, in release() batches per job. Only the settlement worker calls this
    (one process owns the operator's nonce and numbers the payouts)."""
    report = SettleReport()
    payouts_recover(w3=w3, escrow=escrow, from_block=from_block, report=report)
    treasury, fee_bps = escrow.treasury(), escrow.fee_bps()
    job_ids = list(
        Payout.objects.filter(state=PayoutState.PENDING).values_list("job_id", flat=True).distinct().order_by("job_id")
    )
    for job_id in job_ids:
        while batch := _number(job_id, max_batch):
            released = escrow.release(job_id, [ChainPayout(p.payout_index or 0, p.payee, p.amount) for p in batch])
            tx_hash = "0x" + bytes(released.receipt["transactionHash"]).hex().removeprefix("0x")
            with transaction.atomic():
                _settled(
                    batch, tx_hash=tx_hash, block=released.receipt["blockNumber"], treasury=treasury, fee_bps=fee_bps
                )
            report.settled += len(batch)
            report.transactions.append(tx_hash)
            logger.info("job %s: %d payouts released in %s (%d paid now)", job_id, len(batch), tx_hash, released.count)
    return report


# Deposits and closing ---------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    deposits: int = 0
    refunds: int = 0
    funded_jobs: list[UUID] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _tx(event: Any) -> str:
    return "0x" + bytes(event["transactionHash"]).hex().removeprefix("0x")


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
            job_id = job_from_key(event["args"]["jobId"])
            if job_id is not None and Job.objects.filter(id=job_id).exists():
                _ledger(
                    kind=EntryKind.REFUND,
                    job_id=job_id,
                    account=event["args"]["poster"],
                    amount=event["args"]["amount"],
                    key=f"refund:{chain_id}:{_tx(event)}:{event['logIndex']}",
                    tx_hash=_tx(event),
                )
                report.refunds += 1
        ChainCursor.objects.filter(name=cursor.name).update(block=to_block)
        cursor.block = to_block
    fee_bps = escrow.fee_bps()
    for job in Job.objects.filter(state=JobState.DRAFT, deposits__isnull=False).distinct():
        on_chain = escrow.job_of(job.id)
        if on_chain.remaining >= funding_required(job=job, fee_bps=fee_bps):
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
    job_id = job_from_key(args["jobId"])
    if job_id is None or not Job.objects.filter(id=job_id).exists():
        # Money sent to an id the marketplace never issued: it stays the funder's, who can refund it after
        # the deadline; nothing is recorded against any job.
        report.ignored.append(f"{_tx(event)}: job id 0x{bytes(args['jobId']).hex()} is not a marketplace job")
        logger.warning("deposit %s for an unknown job id ignored", _tx(event))
        return
    with transaction.atomic():
        deposit, created = Deposit.objects.get_or_create(
            chain_id=chain_id,
            tx_hash=_tx(event),
            log_index=event["logIndex"],
            defaults={
                "job_id": job_id,
                "block": event["blockNumber"],
                "funder": args["poster"],
                "amount": args["amount"],
            },
        )
        _ledger(
            kind=EntryKind.DEPOSIT,
            job_id=job_id,
            account=args["poster"],
            amount=args["amount"],
            key=f"deposit:{chain_id}:{deposit.tx_hash}:{deposit.log_index}",
            tx_hash=deposit.tx_hash,
        )
    if created:
        report.deposits += 1


def jobs_close(*, escrow: JobEscrow) -> list[UUID]:
    """Close the escrow of every finished job whose payouts are all settled, so its poster can take the rest."""
    closed: list[UUID] = []
    finished = Job.objects.filter(state__in=JOB_TERMINAL, deposits__isnull=False).distinct()
    for job in finished.exclude(payouts__state__in=[PayoutState.PENDING, PayoutState.SENDING]):
        if escrow.job_of(job.id).closed:
            continue
        escrow.close(job.id)
        closed.append(job.id)
        logger.info("job %s closed on chain: its poster may refund the rest", job.id)
    return closed


# Reconciliation ---------------------------------------------------------------------------------------------


@dataclass
class Mismatch:
    subject: str
    what: str
    ledger: int
    chain: int

    def __str__(self) -> str:
        return f"{self.subject}: {self.what} is {self.ledger} in the ledger but {self.chain} on chain"


def reconcile(*, w3: Web3, escrow: JobEscrow, job_id: UUID | None = None, from_block: int = 0) -> list[Mismatch]:
    """Compare the ledger with the chain: per job funded, released and remaining; per payee its credit."""
    mismatches: list[Mismatch] = []
    sums: dict[tuple[UUID, str], int] = defaultdict(int)
    entries = LedgerEntry.objects.all() if job_id is None else LedgerEntry.objects.filter(job_id=job_id)
    for job, kind, amount in entries.values_list("job_id", "kind", "amount"):
        sums[(job, kind)] += int(amount)
    jobs = {job for job, _ in sums}
    if job_id is not None:
        jobs.add(job_id)
    for job in sorted(jobs, key=str):
        on_chain = escrow.job_of(job)
        funded = sums[(job, EntryKind.DEPOSIT)]
        released = sums[(job, EntryKind.PAYOUT)] + sums[(job, EntryKind.FEE)]
        remaining = funded - released - sums[(job, EntryKind.REFUND)]
        for what, ours, theirs in (
            ("funded", funded, on_chain.funded),
            ("released", released, on_chain.released),
            ("remaining", remaining, on_chain.remaining),
        ):
            if ours != theirs:
                mismatches.append(Mismatch(f"job {job}", what, ours, theirs))
    if job_id is None:
        credited: dict[str, int] = defaultdict(int)
        for _kind, account, amount in LedgerEntry.objects.filter(
            kind__in=[EntryKind.PAYOUT, EntryKind.FEE]
        ).values_list("kind", "account", "amount"):
            credited[Web3.to_checksum_address(account)] += int(amount)
        withdrawn: dict[str, int] = defaultdict(int)
        for event in escrow.contract.events.Withdrawn().get_logs(from_block=from_block):
            withdrawn[Web3.to_checksum_address(event["args"]["account"])] += event["args"]["amount"]
        for account, total in sorted(credited.items()):
            if total - withdrawn[account] != escrow.credit_of(account):
                mismatches.append(
                    Mismatch(f"account {account}", "credit", total - withdrawn[account], escrow.credit_of(account))
                )
    return mismatches
