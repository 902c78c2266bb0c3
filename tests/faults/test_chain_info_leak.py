"""Issue [faults] item 8 (first part): the public `/api/chain/` answered ETH_RPC_URL, with a provider's API key
in it, when PUBLIC_ETH_RPC_URL was unset, and called the chain on every anonymous request. It now publishes only
PUBLIC_ETH_RPC_URL or a local chain's URL, and answers from a short per-process cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient
from web3 import Web3

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import deploy
from contracts.sender import Sender
from marketplace.payments import chain, selectors


@pytest.mark.parametrize(
    ("eth_rpc_url", "public", "published"),
    [
        ("https://eth-sepolia.example.com/v2/SECRET-KEY", None, None),
        ("https://user:SECRET@rpc.example.com", None, None),
        ("https://rpc.example.com/?apikey=SECRET", None, None),
        ("https://eth-sepolia.example.com/v2/SECRET-KEY", "https://rpc.sepolia.org", "https://rpc.sepolia.org"),
        ("http://127.0.0.1:8545", None, "http://127.0.0.1:8545"),
        ("http://localhost:8545", None, "http://localhost:8545"),
        ("http://[::1]:8545", None, "http://[::1]:8545"),
        ("http://user:SECRET@127.0.0.1:8545", None, None),
        ("http://127.0.0.1:8545/?key=SECRET", None, None),
        (None, None, None),
    ],
)
def test_the_published_rpc_url_never_carries_a_providers_key(
    settings: Any, eth_rpc_url: str | None, public: str | None, published: str | None
) -> None:
    settings.ETH_RPC_URL = eth_rpc_url
    settings.HASHWORK = {**settings.HASHWORK, "PUBLIC_ETH_RPC_URL": public}
    assert selectors.public_rpc_url() == published


@pytest.mark.django_db
def test_the_public_chain_endpoint_is_cached_so_anonymous_calls_do_not_reach_the_chain(
    settings: Any, tmp_path: Path
) -> None:
    with devchain.start() as anvil:
        w3 = connect(anvil.url)
        settings.ETH_RPC_URL = anvil.url
        settings.HASHWORK = {**settings.HASHWORK, "PUBLIC_ETH_RPC_URL": None}
        settings.CHAIN_DEPLOYMENTS_FILE = tmp_path / "deployments.json"
        chain._senders.clear()
        admin = Sender(w3, devchain.dev_keys(1)[0])
        treasury = Web3.to_checksum_address("0x" + "7e" * 20)
        deploy(w3, admin, treasury, 250, deployments_file=tmp_path / "deployments.json")
        reply = APIClient().get("/api/chain/").json()
        assert reply["configured"] is True
        assert reply["rpc_url"] == anvil.url  # a local chain's URL is published: agents withdraw through it
        started = selectors._chain_info_cache[next(iter(selectors._chain_info_cache))][0]
    # The chain is gone: within the cache window the answer still comes, without a call to the chain.
    assert APIClient().get("/api/chain/").json() == reply
    later = selectors.chain_info(now=started + selectors.CHAIN_INFO_SECONDS + 1)
    assert later == {"configured": False}
    chain._senders.clear()
