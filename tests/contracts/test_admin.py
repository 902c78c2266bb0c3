"""Deployment, roles, pause, fee and treasury settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web3 import Web3

from contracts import errors
from contracts.bindings import DEFAULT_ADMIN_ROLE, ComputeToken, JobEscrow, Payout
from contracts.deploy import Deployment, deploy, load_deployment
from contracts.sender import Sender
from tests.contracts.helpers import FEE_BPS, TOKENS, FundedJob, fee


def test_deploy_records_the_addresses_and_grants_the_roles(
    w3: Web3, deployment: Deployment, admin: Sender, operator: Sender, treasury: Sender, tmp_path: Path
) -> None:
    path = tmp_path / "deployments.json"

    fresh = deploy(w3, admin, treasury.address, 100, operator=operator.address, deployments_file=path)

    assert load_deployment(path, 31337) == fresh
    assert json.loads(path.read_text())["31337"]["escrow"] == fresh.escrow
    escrow = fresh.escrow_contract(w3)
    token = fresh.token_contract(w3)
    assert escrow.has_code()
    assert token.has_code()
    assert escrow.token_address() == fresh.token
    assert (escrow.fee_bps(), escrow.treasury()) == (100, treasury.address)
    assert escrow.has_role(JobEscrow.PAYOUT_ROLE, operator.address)
    assert not escrow.has_role(JobEscrow.PAYOUT_ROLE, admin.address)
    assert escrow.has_role(DEFAULT_ADMIN_ROLE, admin.address)
    assert escrow.has_role(JobEscrow.PAUSER_ROLE, admin.address)
    assert token.has_role(ComputeToken.MINTER_ROLE, admin.address)
    assert fresh.escrow != deployment.escrow


def test_deploy_can_reuse_an_existing_token(w3: Web3, deployment: Deployment, admin: Sender) -> None:
    second = deploy(w3, admin, admin.address, 0, token=deployment.token)

    assert second.token == deployment.token
    assert second.escrow_contract(w3).token_address() == deployment.token


def test_a_deployments_file_keeps_one_entry_per_chain(
    w3: Web3, deployment: Deployment, admin: Sender, tmp_path: Path
) -> None:
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps({"11155111": {**deployment.to_json(), "chain_id": 11155111}}))

    deploy(w3, admin, admin.address, 0, token=deployment.token, deployments_file=path)

    assert load_deployment(path, 11155111).chain_id == 11155111
    assert load_deployment(path, 31337).token == deployment.token
    with pytest.raises(errors.DeploymentNotFound, match="chain 1 "):
        load_deployment(path, 1)


def test_the_escrow_refuses_a_fee_above_the_cap_at_deployment(w3: Web3, admin: Sender) -> None:
    with pytest.raises(errors.EscrowFeeTooHigh) as raised:
        deploy(w3, admin, admin.address, 1001)

    assert raised.value.fields == {"feeBps": 1001, "maxFeeBps": 1000}


def test_the_escrow_refuses_a_zero_treasury_at_deployment(w3: Web3, admin: Sender) -> None:
    with pytest.raises(errors.EscrowZeroAddress):
        deploy(w3, admin, "0x" + "00" * 20, 100)


def test_the_minter_mints_and_nobody_else(token: ComputeToken, admin: Sender, stranger: Sender, node: Sender) -> None:
    token.connect(admin).mint(node.address, 5 * TOKENS)

    with pytest.raises(errors.AccessControlUnauthorizedAccount) as raised:
        token.connect(stranger).mint(stranger.address, TOKENS)

    assert raised.value.fields == {"account": stranger.address, "neededRole": ComputeToken.MINTER_ROLE}
    assert token.balance_of(node.address) == 5 * TOKENS
    assert (token.name(), token.symbol(), token.decimals()) == ("Hashwork Compute", "HWC", 18)


def test_a_transfer_beyond_the_balance_reverts_with_the_tokens_error(
    token: ComputeToken, node: Sender, stranger: Sender
) -> None:
    with pytest.raises(errors.ERC20InsufficientBalance) as raised:
        token.connect(node).transfer(stranger.address, 1)

    assert raised.value.fields == {"sender": node.address, "balance": 0, "needed": 1}


def test_set_fee_bps_changes_the_fee_on_later_payouts(
    escrow: JobEscrow, job: FundedJob, admin: Sender, operator: Sender, node: Sender, treasury: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 10 * TOKENS)])

    receipt = escrow.connect(admin).set_fee_bps(1000)
    escrow.connect(operator).release(job.id, [Payout(1, node.address, 10 * TOKENS)])

    assert escrow.fee_bps() == 1000
    assert escrow.credit_of(treasury.address) == fee(10 * TOKENS) + TOKENS
    (event,) = escrow.events(receipt, "FeeBpsUpdated")
    assert event["args"] == {"previousFeeBps": FEE_BPS, "newFeeBps": 1000}


def test_a_fee_above_ten_percent_is_refused(escrow: JobEscrow, admin: Sender) -> None:
    with pytest.raises(errors.EscrowFeeTooHigh):
        escrow.connect(admin).set_fee_bps(1001)

    assert escrow.fee_bps() == FEE_BPS


def test_set_treasury_redirects_later_fees_and_keeps_earlier_ones(
    escrow: JobEscrow, job: FundedJob, admin: Sender, operator: Sender, node: Sender, treasury: Sender, stranger: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 10 * TOKENS)])

    escrow.connect(admin).set_treasury(stranger.address)
    escrow.connect(operator).release(job.id, [Payout(1, node.address, 10 * TOKENS)])

    assert escrow.treasury() == stranger.address
    assert escrow.credit_of(treasury.address) == fee(10 * TOKENS)
    assert escrow.credit_of(stranger.address) == fee(10 * TOKENS)


def test_a_zero_treasury_is_refused(escrow: JobEscrow, admin: Sender) -> None:
    with pytest.raises(errors.EscrowZeroAddress):
        escrow.connect(admin).set_treasury("0x" + "00" * 20)


@pytest.mark.parametrize("who", ["operator", "poster", "stranger"])
def test_only_the_admin_sets_the_fee_and_the_treasury(
    escrow: JobEscrow, request: pytest.FixtureRequest, who: str
) -> None:
    caller: Sender = request.getfixturevalue(who)

    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        escrow.connect(caller).set_fee_bps(0)
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        escrow.connect(caller).set_treasury(caller.address)


@pytest.mark.parametrize("who", ["operator", "poster", "stranger"])
def test_only_the_pauser_pauses(escrow: JobEscrow, request: pytest.FixtureRequest, who: str) -> None:
    caller: Sender = request.getfixturevalue(who)

    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        escrow.connect(caller).pause()

    assert not escrow.paused()


def test_pause_and_unpause_are_not_repeatable(escrow: JobEscrow, admin: Sender) -> None:
    with pytest.raises(errors.ExpectedPause):
        escrow.connect(admin).unpause()
    escrow.connect(admin).pause()
    with pytest.raises(errors.EnforcedPause):
        escrow.connect(admin).pause()
    assert escrow.paused()


def test_close_still_works_while_paused_so_posters_can_leave(
    escrow: JobEscrow, job: FundedJob, admin: Sender, operator: Sender
) -> None:
    escrow.connect(admin).pause()

    escrow.connect(operator).close(job.id)
    escrow.connect(job.poster).refund(job.id)

    assert escrow.job_of(job.id).remaining == 0
