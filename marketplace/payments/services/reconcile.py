"""Reconciliation: the ledger against the chain, per job and per payee.

Amounts are integers in token base units everywhere. Nothing here edits a ledger entry; every write that can
be repeated (a re-read block, a re-sent batch) is made idempotent by a unique key.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from web3 import Web3

from contracts.bindings import JobEscrow
from contracts.logs import in_ranges
from marketplace.payments.models import (
    EntryKind,
    JobSettlement,
    LedgerEntry,
)
from marketplace.payments.services.escrow import escrow_key

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
    # A job bound to an escrow id is compared even with nothing in its ledger: a deposit the chain holds but the
    # ledger has not recorded is a mismatch, not a match.
    bound = JobSettlement.objects.filter(escrow_id__isnull=False).exclude(escrow_id="")
    jobs |= set((bound if job_id is None else bound.filter(job_id=job_id)).values_list("job_id", flat=True))
    if job_id is not None:
        jobs.add(job_id)
    for job in sorted(jobs, key=str):
        on_chain = escrow.job_of(escrow_key(job))
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
        windows = in_ranges(
            lambda lo, hi: escrow.contract.events.Withdrawn().get_logs(from_block=lo, to_block=hi),
            from_block=from_block,
            to_block=w3.eth.block_number,
            max_range=settings.LOG_BLOCK_RANGE,
        )
        for _lo, _hi, events in windows:
            for event in events:
                withdrawn[Web3.to_checksum_address(event["args"]["account"])] += event["args"]["amount"]
        for account, total in sorted(credited.items()):
            if total - withdrawn[account] != escrow.credit_of(account):
                mismatches.append(
                    Mismatch(f"account {account}", "credit", total - withdrawn[account], escrow.credit_of(account))
                )
    return mismatches
