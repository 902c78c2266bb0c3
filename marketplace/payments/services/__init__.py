"""Writes for money: payouts and their settlement (payouts), deposits from the chain (deposits), the ledger
against the chain (reconcile). Amounts are integers in token base units everywhere. Nothing here edits a ledger
entry; every write that can be repeated (a re-read block, a re-sent batch) is made idempotent by a unique key."""

from marketplace.payments.services.deposits import SyncReport, chain_sync
from marketplace.payments.services.escrow import (
    Terms,
    escrow_bind,
    escrow_deadline_min,
    escrow_id_for,
    escrow_key,
    funding_problem,
    funding_terms,
    job_of_escrow_id,
    settlement_margin,
)
from marketplace.payments.services.payouts import (
    MAX_BATCH,
    SettleReport,
    fee_of,
    funding_for,
    funding_required,
    jobs_close,
    payout_create,
    payout_on_accept,
    payouts_recover,
    payouts_settle,
    settlement_problems,
    settlement_refused,
    settlement_retry_delay,
    settlement_succeeded,
)
from marketplace.payments.services.reconcile import Mismatch, reconcile

__all__ = [
    "MAX_BATCH",
    "Mismatch",
    "SettleReport",
    "SyncReport",
    "Terms",
    "chain_sync",
    "escrow_bind",
    "escrow_deadline_min",
    "escrow_id_for",
    "escrow_key",
    "fee_of",
    "funding_for",
    "funding_problem",
    "funding_required",
    "funding_terms",
    "job_of_escrow_id",
    "jobs_close",
    "payout_create",
    "payout_on_accept",
    "payouts_recover",
    "payouts_settle",
    "reconcile",
    "settlement_margin",
    "settlement_problems",
    "settlement_refused",
    "settlement_retry_delay",
    "settlement_succeeded",
]
