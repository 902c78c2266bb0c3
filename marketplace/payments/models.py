"""Deposits (JobFunded events), the append-only ledger, and one payout per accepted assignment."""

from __future__ import annotations

import uuid

from django.db import models

from marketplace.core.fields import Uint256Field


class ChainCursor(models.Model):
    """How far a chain reader has got (the last block it has fully processed)."""

    name = models.CharField(max_length=64, primary_key=True)
    chain_id = models.PositiveBigIntegerField()
    block = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at block {self.block} of chain {self.chain_id}"


class Deposit(models.Model):
    """One JobFunded event, recorded once (unique by transaction and log index)."""

    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="deposits")
    chain_id = models.PositiveBigIntegerField()
    tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    block = models.PositiveBigIntegerField()
    funder = models.CharField(max_length=42)
    amount = Uint256Field()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "tx_hash", "log_index"], name="deposit_once_per_log")
        ]

    def __str__(self) -> str:
        return f"deposit of {self.amount} to job {self.job_id} ({self.tx_hash}:{self.log_index})"


class EntryKind(models.TextChoices):
    DEPOSIT = "deposit"
    PAYOUT = "payout"
    FEE = "fee"
    REFUND = "refund"


class LedgerEntry(models.Model):
    """Append-only: balances are sums of entries; a correction is a new entry, never an edit."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=EntryKind.choices)
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="ledger_entries")
    account = models.CharField(max_length=42, help_text="The address credited (payee, treasury) or debited.")
    amount = Uint256Field()
    idempotency_key = models.CharField(max_length=128, unique=True)
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.account} (job {self.job_id})"


class PayoutState(models.TextChoices):
    PENDING = "pending"
    # Numbered and about to be (or being) sent: after a crash, the chain says whether it was paid.
    SENDING = "sending"
    SETTLED = "settled"


class Payout(models.Model):
    """What one accepted assignment earns; the assignment id is its idempotency key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    assignment = models.OneToOneField("jobs.Assignment", on_delete=models.PROTECT, related_name="payout")
    job = models.ForeignKey("jobs.Job", on_delete=models.PROTECT, related_name="payouts")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="payouts")
    payee = models.CharField(max_length=42)
    amount = Uint256Field()
    fee = Uint256Field()
    # Numbered by the settlement worker (one process), so a job's indexes never collide.
    payout_index = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=PayoutState.choices, default=PayoutState.PENDING, db_index=True)
    tx_hash = models.CharField(max_length=66, blank=True, default="")
    block = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["job", "payout_index"], name="payout_index_unique_per_job")]

    def __str__(self) -> str:
        return f"payout {self.payout_index} of job {self.job_id}: {self.amount} to {self.payee} ({self.state})"


class SettlementStep(models.TextChoices):
    RELEASE = "release"
    CLOSE = "close"


class JobSettlement(models.Model):
    """A job's account in the escrow: its poster-bound escrow id, and how its settlement on chain goes. A refused
    release or close is recorded here with the chain's decoded reason and retried with backoff; it never holds
    up another job's settlement."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, primary_key=True, related_name="settlement")
    # The escrow's bytes32 job id, 0x-hex: the poster's wallet (20 bytes) then the job id's first 12 bytes. Only
    # deposits to this id count for the job; bound by the poster before funding (dashboard, API, fund-dev).
    escrow_id = models.CharField(max_length=66, unique=True, null=True, blank=True)
    poster_wallet = models.CharField(max_length=42, blank=True, default="")
    refusals = models.PositiveIntegerField(default=0, help_text="Refusals in a row of the step below.")
    refused_step = models.CharField(max_length=16, choices=SettlementStep.choices, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    refused_at = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_tx = models.CharField(max_length=66, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        if self.refusals:
            return f"job {self.job_id}: {self.refused_step} refused {self.refusals}x ({self.last_error})"
        return f"job {self.job_id}: settling" if self.closed_at is None else f"job {self.job_id}: closed"
