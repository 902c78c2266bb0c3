"""The live quote charges the escrow's own fee, read from a real Anvil; without a chain it quotes the default
rate and says so."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from web3 import Web3

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import Deployment, deploy
from contracts.sender import Sender
from marketplace.jobs.models import Job
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# 8 images in chunks of 4, rendered twice, at 0.5 HWC a replica: 2 tasks × 2 replicas × 0.5 HWC = 2 HWC before the fee.
RENDER_FORM = {
    "products": ["cereal", "water"],
    "scene": "shelf",
    "images": "8",
    "chunk_size": "4",
    "resolution": "64",
    "samples": "4",
    "seed": "1",
    "replication": "2",
    "price": "0.5",
}
DEFAULT_QUOTE = "= 2 HWC + 2.5 % fee (the default rate: no chain answered with the escrow's) = 2.05 HWC"


@pytest.fixture(scope="module")
def anvil() -> Iterator[devchain.DevChain]:
    with devchain.start() as running:
        yield running


@pytest.fixture
def escrow_at_300_bps(anvil: devchain.DevChain, settings: Any, tmp_path: Path) -> Iterator[tuple[Web3, Deployment]]:
    """A fresh deployment charging 3 % on the module's Anvil, rewound afterwards."""
    w3 = connect(anvil.url)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    settings.ETH_RPC_URL = anvil.url
    settings.CHAIN_DEPLOYMENTS_FILE = tmp_path / "deployments.json"
    admin = Sender(w3, devchain.dev_keys(1)[0])
    deployed = deploy(w3, admin, admin.address, 300, deployments_file=settings.CHAIN_DEPLOYMENTS_FILE)
    yield w3, deployed
    assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True


@pytest.fixture
def browser() -> Client:
    client = Client()
    client.force_login(UserFactory(username="alice"))
    return client


def _quote(browser: Client) -> str:
    response = browser.post("/jobs/quote/render/", RENDER_FORM)
    assert response.status_code == 200
    return response.content.decode()


def test_the_quote_charges_the_escrows_fee_as_it_is_now(
    browser: Client, escrow_at_300_bps: tuple[Web3, Deployment]
) -> None:
    w3, deployed = escrow_at_300_bps
    assert "2 tasks × 2 replica(s) × 0.5 HWC = 2 HWC + 3 % fee = 2.06 HWC" in _quote(browser)

    deployed.escrow_contract(w3, Sender(w3, devchain.dev_keys(1)[0])).set_fee_bps(1000)

    assert "= 2 HWC + 10 % fee = 2.2 HWC" in _quote(browser)


def test_the_job_page_asks_the_same_escrow_to_fund_the_quote_plus_its_fee(
    browser: Client, escrow_at_300_bps: tuple[Web3, Deployment]
) -> None:
    _, deployed = escrow_at_300_bps
    browser.post("/jobs/new/render/", RENDER_FORM)
    job = Job.objects.get()
    page = browser.get(f"/jobs/{job.id}/").content.decode()
    assert deployed.escrow in page
    assert "2.06 HWC (2 + 300 bps fee)" in page


def test_without_a_chain_the_quote_charges_the_default_fee_and_says_so(browser: Client, settings: Any) -> None:
    settings.ETH_RPC_URL = ""
    assert DEFAULT_QUOTE in _quote(browser)
    browser.post("/jobs/new/render/", RENDER_FORM)
    assert browser.get(f"/jobs/{Job.objects.get().id}/").status_code == 200


def test_a_chain_that_does_not_answer_gets_the_default_fee_too(browser: Client, settings: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.ETH_RPC_URL = f"http://127.0.0.1:{port}"
    assert DEFAULT_QUOTE in _quote(browser)


def test_a_chain_without_the_escrow_deployed_gets_the_default_fee_too(
    browser: Client, anvil: devchain.DevChain, settings: Any, tmp_path: Path
) -> None:
    settings.ETH_RPC_URL = anvil.url
    settings.CHAIN_DEPLOYMENTS_FILE = tmp_path / "deployments.json"  # nothing recorded for this chain
    assert DEFAULT_QUOTE in _quote(browser)
