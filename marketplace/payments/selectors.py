"""Reads for money: a node's earnings, a job's escrow account, and what the chain looks like from outside."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import QuerySet
from web3 import Web3
from web3.exceptions import Web3Exception

from contracts.deploy import DEFAULT_FEE_BPS
from contracts.errors import ChainError
from marketplace.jobs.models import Job
from marketplace.nodes.models import Node
from marketplace.payments import chain
from marketplace.payments.models import JobSettlement, Payout, PayoutState
from marketplace.payments.services import escrow
from marketplace.payments.services.payouts import funding_required

logger = logging.getLogger(__name__)


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


# chain_info is public (no login) and asks the chain: answered from a per-process cache for this long.
CHAIN_INFO_SECONDS = 30.0
_chain_info_cache: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}


def public_rpc_url() -> str | None:
    """The JSON-RPC URL wallets and node agents are told to use: PUBLIC_ETH_RPC_URL; else ETH_RPC_URL only when it
    is a loopback address with no credentials (a local chain). A provider's URL usually carries its API key (in
    the path, the query or the user part), so it is never published by default."""
    public = settings.HASHWORK["PUBLIC_ETH_RPC_URL"]
    if public:
        return str(public)
    url = settings.ETH_RPC_URL
    if not url:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback or parts.username or parts.password or parts.query:
        return None
    return str(url)


def chain_info(*, now: float | None = None) -> dict[str, Any]:
    """Where the escrow lives, for wallets and node agents (no secrets), cached CHAIN_INFO_SECONDS per process so
    that anonymous callers cannot make the marketplace call the chain on every request."""
    now = time.monotonic() if now is None else now
    key = (settings.ETH_RPC_URL, settings.HASHWORK["PUBLIC_ETH_RPC_URL"], str(settings.CHAIN_DEPLOYMENTS_FILE))
    cached = _chain_info_cache.get(key)
    if cached is not None and now - cached[0] < CHAIN_INFO_SECONDS:
        return dict(cached[1])
    info = _chain_info_read()
    _chain_info_cache.clear()
    _chain_info_cache[key] = (now, info)
    return dict(info)


def _chain_info_read() -> dict[str, Any]:
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
        fee_bps = chain.escrow(w3).fee_bps()
    except (chain.ChainNotConfigured, chain.ChainUnavailable, ChainError, FileNotFoundError, KeyError):
        return {"configured": False}
    info: dict[str, Any] = {
        "configured": True,
        "chain_id": dep.chain_id,
        "escrow": dep.escrow,
        "token": dep.token,
        "fee_bps": fee_bps,
    }
    rpc_url = public_rpc_url()
    if rpc_url:
        info["rpc_url"] = rpc_url
    return info


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
        "funding": funding_required(job=job, fee_bps=escrow_fee().bps),
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


@dataclass(frozen=True)
class EscrowFee:
    bps: int
    read: bool  # False: no escrow answered, and `bps` is the rate `chain deploy` gives a new escrow


def escrow_fee() -> EscrowFee:
    """The fee the escrow takes on each payout, as it answers now; the deployment default when no chain answers."""
    try:
        w3 = chain.web3()
        return EscrowFee(bps=chain.escrow(w3).fee_bps(), read=True)
    except chain.ChainNotConfigured:
        return EscrowFee(bps=DEFAULT_FEE_BPS, read=False)
    # OSError and Web3Exception: the node went away mid-call, or no contract answers at the recorded address.
    except (chain.ChainUnavailable, ChainError, OSError, Web3Exception) as exc:
        logger.info("escrow fee unreadable (%s: %s): quoting the default rate", type(exc).__name__, exc)
        return EscrowFee(bps=DEFAULT_FEE_BPS, read=False)
