"""The marketplace's view of the chain: a connection, the deployment it reads and the operator's sender."""

from __future__ import annotations

import os
import threading

from django.conf import settings
from web3 import Web3

from contracts import devchain
from contracts.bindings import JobEscrow
from contracts.connection import connect
from contracts.deploy import Deployment, load_deployment
from contracts.errors import ChainError
from contracts.sender import Sender


class ChainNotConfigured(Exception):
    """No chain to talk to: ETH_RPC_URL is unset (the demo and the tests start an Anvil and set it)."""


class ChainUnavailable(Exception):
    """The chain does not answer right now: money waits and the work is retried."""


_lock = threading.Lock()
_senders: dict[tuple[int, str], Sender] = {}


def web3() -> Web3:
    if not settings.ETH_RPC_URL:
        raise ChainNotConfigured("ETH_RPC_URL is not set: point it at a chain with the Hashwork contracts deployed.")
    try:
        return connect(settings.ETH_RPC_URL)
    except ChainError as exc:
        raise ChainUnavailable(str(exc)) from exc


def deployment(w3: Web3) -> Deployment:
    return load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)


def operator(w3: Web3) -> Sender:
    """The operator's one sender in this process (it owns the key's nonce: keep it to one process)."""
    key = settings.OPERATOR_KEY
    if key is None:
        if w3.eth.chain_id not in devchain.LOCAL_CHAIN_IDS:
            raise ChainNotConfigured("OPERATOR_KEY (or OPERATOR_KEY_FILE) must be set on a non-local chain.")
        key = devchain.dev_keys(1)[0]
    cache_key = (os.getpid(), str(settings.ETH_RPC_URL))
    with _lock:
        sender = _senders.get(cache_key)
        if sender is None:
            # Settlement transactions are re-priced when stuck (EIP-1559 replacement; see contracts.sender).
            sender = Sender(w3, key, bump_after=settings.TX_BUMP_SECONDS, max_bumps=settings.TX_MAX_BUMPS)
            _senders[cache_key] = sender
        return sender


def escrow(w3: Web3, *, signed: bool = False) -> JobEscrow:
    dep = deployment(w3)
    return dep.escrow_contract(w3, operator(w3) if signed else None)
