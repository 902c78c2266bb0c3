"""Reads for money: a node's earnings, and what the chain looks like from outside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from web3 import Web3

from contracts.errors import ChainError
from marketplace.nodes.models import Node
from marketplace.payments import chain
from marketplace.payments.models import Payout, PayoutState


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
