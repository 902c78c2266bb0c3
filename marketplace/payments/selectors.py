"""Reads for money: a node's earnings, a job's escrow account, and what the chain looks like from outside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from web3 import Web3

from contracts.deploy import DEFAULT_FEE_BPS
from contracts.errors import ChainError
from marketplace.jobs.models import Job
from marketplace.nodes.models import Node
from marketplace.payments import chain
from marketplace.payments.models import JobSettlement, Payout, PayoutState
from marketplace.payments.services import escrow
from marketplace.payments.services.payouts import funding_required


@dataclass(frozen=True)
class Earnings:
    settled: int
    pending: int
    credit: int | None
    payouts: QuerySet[Payout]


def node_earnings(*, node: Node, limit: int = 50) -> Earnings:
    """What a node has earned: settled and pending payouts, and its withdrawable credit on chain if reachable."""
    payouts = Payout.objects.filter(node=node).select_related("job").order_by("-created_at")
    settled = sum(int(p) for p in payouts.filter(state=PayoutState.SETTLED).values_list("amount", flat=True))
    pending = sum(int(p) for p in payouts.exclude(state=PayoutState.SETTLED).values_list("amount", flat=True))
    credit = None
    try:
        w3 = chain.web3()
        credit = chain.escrow(w3).credit_of(Web3.to_checksum_address(node.wallet_address))
    except (chain.ChainNotConfigured, chain.ChainUnavailable, ChainError, FileNotFoundError, KeyError):
        credit = None
    return Earnings(settled=settled, pending=pending, credit=credit, payouts=payouts[:limit])


def chain_info() -> dict[str, Any]:
    """Where the escrow lives, for wallets and node agents (no secrets)."""
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
    except (chain.ChainNotConfigured, chain.ChainUnavailable, ChainError, FileNotFoundError, KeyError):
        return {"configured": False}
    return {
        "configured": True,
        "chain_id": dep.chain_id,
        "rpc_url": settings.HASHWORK["PUBLIC_ETH_RPC_URL"] or settings.ETH_RPC_URL,
        "escrow": dep.escrow,
        "token": dep.token,
        "fee_bps": chain.escrow(w3).fee_bps(),
    }


def job_escrow(*, job: Job) -> dict[str, Any]:
    """How a job is (to be) funded and settled in the escrow: its poster-bound id, the terms and deadline a
    deposit must have, and the last refused release or close, if any."""
    terms = escrow.funding_terms(job)
    settlement = JobSettlement.objects.filter(job=job).first()
    refused = settlement is not None and settlement.refusals > 0
    return {
        "job": job.id,
        "escrow_id": settlement.escrow_id if settlement else None,
        "wallet": settlement.poster_wallet or None if settlement else None,
        "max_payouts": terms.max_payouts,
        "max_payout": terms.max_payout,
        "deadline_min": escrow.escrow_deadline_min(job),
        "funding": funding_required(job=job, fee_bps=_fee_bps()),
        "settlement": {
            "refused_step": settlement.refused_step,
            "refusals": settlement.refusals,
            "last_error": settlement.last_error,
            "retry_at": settlement.retry_at,
        }
        if refused and settlement is not None
        else None,
        "closed_at": settlement.closed_at if settlement else None,
    }


def _fee_bps() -> int:
    try:
        w3 = chain.web3()
        return chain.escrow(w3).fee_bps()
    except (chain.ChainNotConfigured, chain.ChainUnavailable, ChainError, FileNotFoundError, KeyError):
        return DEFAULT_FEE_BPS
