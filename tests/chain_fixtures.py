"""Fixtures for tests that need the escrow on a real Anvil: one chain per module, a fresh deployment per test
(rewound afterwards). Import them into the test module: `from tests.chain_fixtures import anvil, dep, w3`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from contracts import devchain
from contracts.bindings import ComputeToken, JobEscrow
from contracts.connection import connect
from contracts.deploy import Deployment, deploy
from contracts.sender import Sender
from marketplace.jobs.models import Job, JobState
from marketplace.payments import chain, services
from marketplace.payments.models import JobSettlement

FEE_BPS = 250


@pytest.fixture(scope="module")
def anvil() -> Iterator[devchain.DevChain]:
    with devchain.start() as running:
        yield running


@pytest.fixture
def w3(anvil: devchain.DevChain, settings: Any, tmp_path: Path) -> Iterator[Web3]:
    """A fresh deployment per test on the module's Anvil, rewound afterwards."""
    w3 = connect(anvil.url)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    settings.ETH_RPC_URL = anvil.url
    settings.CHAIN_DEPLOYMENTS_FILE = tmp_path / "deployments.json"
    chain._senders.clear()
    admin = Sender(w3, devchain.dev_keys(1)[0])
    treasury = Web3.to_checksum_address("0x" + "7e" * 20)
    deploy(w3, admin, treasury, FEE_BPS, deployments_file=settings.CHAIN_DEPLOYMENTS_FILE)
    yield w3
    chain._senders.clear()
    assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True


@pytest.fixture
def dep(w3: Web3) -> Deployment:
    return chain.deployment(w3)


def dev_account(w3: Web3, who: int = 1) -> Sender:
    return Sender(w3, devchain.dev_keys(who + 1)[who])


def fund_raw(
    w3: Web3, dep: Deployment, key: bytes, amount: int, *, who: int, deadline: int, max_payouts: int, max_payout: int
) -> Sender:
    """Anvil dev account `who` gets tokens from the faucet, approves the escrow and funds escrow id `key`."""
    admin = Sender(w3, devchain.dev_keys(1)[0])
    poster = dev_account(w3, who)
    ComputeToken(w3, dep.token, admin).mint(poster.address, amount)
    ComputeToken(w3, dep.token, poster).approve(dep.escrow, amount)
    JobEscrow(w3, dep.escrow, poster).fund(key, amount, deadline, max_payouts=max_payouts, max_payout=max_payout)
    return poster


def poster_funds(
    w3: Web3, dep: Deployment, job: Job, amount: int, *, who: int = 1, deadline: int | None = None
) -> Sender:
    """The job's poster (Anvil dev account `who`) binds the job's escrow id to its wallet, as the dashboard and
    the API do, and funds it with the job's terms and (by default) the earliest deadline that starts it."""
    if job.state == JobState.DRAFT:
        services.escrow_bind(job_id=job.id, wallet=dev_account(w3, who).address)
    else:  # a job the test made running directly, as if it had been bound and funded before
        bind_directly(job, dev_account(w3, who).address)
    terms = services.funding_terms(job)
    return fund_raw(
        w3,
        dep,
        services.escrow_key(job.id),
        amount,
        who=who,
        deadline=deadline or services.escrow_deadline_min(job),
        max_payouts=terms.max_payouts,
        max_payout=terms.max_payout,
    )


def bind_directly(job: Job, wallet: str) -> None:
    escrow_id = "0x" + services.escrow_id_for(job_id=job.id, wallet=wallet).hex()
    JobSettlement.objects.update_or_create(job=job, defaults={"escrow_id": escrow_id, "poster_wallet": wallet})


def sync(w3: Web3, dep: Deployment) -> services.SyncReport:
    return services.chain_sync(w3=w3, escrow=chain.escrow(w3), chain_id=dep.chain_id, start_block=dep.block_number)


def settle(w3: Web3, dep: Deployment) -> services.SettleReport:
    return services.payouts_settle(w3=w3, escrow=chain.escrow(w3, signed=True), from_block=dep.block_number)
