"""End to end with money: real agents, the real Redis and a real Anvil with the escrow deployed. A job is
funded on chain, run, paid per accepted replica, closed and refunded; the settlement worker survives a kill -9
right after broadcasting and a chain that goes away; the ledger reconciles with the chain every time."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from web3 import Web3

from contracts import devchain
from contracts.bindings import ComputeToken, JobEscrow
from contracts.sender import Sender
from tests.e2e.stack import ROOT, Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow
PRICE = 10**18
FEE = PRICE * 250 // 10_000


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    options = {"chain": True, **getattr(request, "param", {})}
    running = Stack(tmp_path, **options).start()
    try:
        yield running
    finally:
        running.stop()


def _reconciled(stack: Stack) -> bool:
    done = subprocess.run(
        [sys.executable, "manage.py", "payments", "reconcile"],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode == 0


def _settled(stack: Stack, agents: list, expected: dict[str, int]) -> bool:  # type: ignore[type-arg]
    earnings = {a.node_id: a.api.get(f"{stack.url}/api/nodes/me/earnings/", timeout=10).json() for a in agents}
    return all(int(e["pending"]) == 0 and int(e["settled"]) == expected.get(n, 0) for n, e in earnings.items())


def _accepted_per_node(stack: Stack, job_id: str) -> Counter[str]:
    return Counter(str(r["node"]) for r in stack.results(job_id) if r["state"] == "accepted")


# The same money path on both local chains the product names: Anvil, and Hardhat Network.
@pytest.mark.parametrize("stack", [{"chain": True}, {"chain": "hardhat"}], indirect=True, ids=["anvil", "hardhat"])
def test_a_job_is_funded_on_chain_paid_per_accepted_replica_refunded_and_reconciled(stack: Stack) -> None:
    agents = [stack.agent("miner-a"), stack.agent("miner-b")]
    job_id = stack.post_job({"tasks": 6, "matrix_size": 32, "seed": 4}, replication=2, on_chain_extra="1.5")
    stack.wait_job(job_id)
    accepted = _accepted_per_node(stack, job_id)
    assert sum(accepted.values()) == 12
    expected = {node: n * PRICE for node, n in accepted.items()}
    wait_for(lambda: _settled(stack, agents, expected), timeout=60, what="every payout to settle")
    w3, dep = stack.w3(), stack.deployment()
    escrow = JobEscrow(w3, dep.escrow)
    for agent in agents:
        wallet = Web3.to_checksum_address(json.loads(agent.config.read_text())["wallet_address"])
        assert escrow.credit_of(wallet) == accepted[agent.node_id] * PRICE
    assert escrow.credit_of(dep.treasury) == 12 * FEE
    key = stack.escrow_key(job_id)
    wait_for(lambda: escrow.job_of(key).closed, timeout=30, what="the job to be closed")
    # The poster takes back the 1.5 HWC that was never needed.
    poster = Sender(w3, devchain.dev_keys(2)[1])
    token = ComputeToken(w3, dep.token)
    before = token.balance_of(poster.address)
    JobEscrow(w3, dep.escrow, poster).refund(key)
    assert token.balance_of(poster.address) - before == 15 * PRICE // 10
    wait_for(lambda: _reconciled(stack), timeout=30, what="the ledger to match the chain")
    # A miner withdraws: gas money first, then `nodeagent withdraw`.
    wallet = json.loads(agents[0].config.read_text())["wallet_address"]
    stack.manage("chain", "faucet", wallet, "0.000001", "--eth", "1")
    done = stack.nodeagent("miner-a", "withdraw", env=agents[0].env)
    assert done.returncode == 0, done.stderr
    assert "Withdrew" in done.stdout
    assert escrow.credit_of(Web3.to_checksum_address(wallet)) == 0
    assert token.balance_of(Web3.to_checksum_address(wallet)) == accepted[agents[0].node_id] * PRICE + 10**12
    status = stack.nodeagent("miner-a", "status", env=agents[0].env)
    assert "0 HWC withdrawable" in status.stdout, status.stdout
    # The other miner's operator withdraws from the dashboard: the running agent does it at its next heartbeat.
    other = Web3.to_checksum_address(json.loads(agents[1].config.read_text())["wallet_address"])
    stack.manage("chain", "faucet", other, "0.000001", "--eth", "1")
    operator = _dashboard_login(stack, agents[1].operator)
    page = operator.get(f"{stack.url}/nodes/", timeout=10)
    assert "Withdraw" in page.text
    asked = operator.post(
        f"{stack.url}/nodes/{agents[1].node_id}/withdraw/",
        data={"csrfmiddlewaretoken": operator.cookies["csrftoken"]},
        headers={"Referer": f"{stack.url}/nodes/"},
        timeout=10,
    )
    assert asked.status_code == 200
    assert "will withdraw its credit" in asked.text
    wait_for(lambda: escrow.credit_of(other) == 0, timeout=60, what="the dashboard's withdrawal")
    assert token.balance_of(other) == accepted[agents[1].node_id] * PRICE + 10**12
    # The credit is 0 once the transaction is mined; the agent says so after its receipt poll returns.
    wait_for(lambda: "Withdrew" in agents[1].log.read_text(), timeout=30, what="the agent's report of it")
    assert _reconciled(stack)


def _dashboard_login(stack: Stack, username: str) -> requests.Session:
    password = "a-long-Passphrase-9"
    stack.manage(
        "shell", "-c",
        f"from django.contrib.auth import get_user_model as g; u = g().objects.get(username='{username}'); "
        f"u.set_password('{password}'); u.save()",
    )  # fmt: skip
    session = requests.Session()
    session.get(f"{stack.url}/accounts/login/", timeout=10)
    reply = session.post(
        f"{stack.url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{stack.url}/accounts/login/"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert "Log out" in reply.text
    return session


def test_an_under_funded_job_never_dispatches_until_it_is_topped_up(stack: Stack) -> None:
    miner = stack.agent("miner")
    # Nothing earned yet: a withdrawal is refused with a reason, and nothing is sent.
    refused = stack.nodeagent("miner", "withdraw", env=miner.env)
    assert refused.returncode == 2
    assert "no credit in the escrow yet" in refused.stderr
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={"kind": "benchmark", "spec": {"tasks": 2, "matrix_size": 16, "seed": 1},
              "price_per_replica": str(PRICE), "replication": 1},
        timeout=10,
    )  # fmt: skip
    job_id = reply.json()["id"]
    key = stack.escrow_fund(job_id, PRICE)  # needs 2 × (1 + 0.025)
    wait_for(lambda: _reconciled(stack), timeout=30, what="the deposit to be recorded")
    wait_for(lambda: stack.job(job_id)["state_reason"], timeout=30, what="the deposit to be judged")
    job = stack.job(job_id)
    assert job["state"] == "draft"
    assert "Top it up with the difference" in job["state_reason"]
    assert key[:20] == bytes.fromhex(Sender(stack.w3(), devchain.dev_keys(2)[1]).address[2:])  # bound to the poster
    stack.escrow_fund(job_id, PRICE + 2 * FEE)
    stack.wait_job(job_id)


@pytest.mark.parametrize("stack", [{"settlement": False}], indirect=True)
def test_a_settlement_worker_killed_right_after_broadcasting_pays_nobody_twice(stack: Stack, tmp_path: Path) -> None:
    agents = [stack.agent("miner-a"), stack.agent("miner-b")]
    job_id = stack.post_job({"tasks": 4, "matrix_size": 16, "seed": 8}, replication=2)
    stack.wait_job(job_id)  # dev-funded: no money in escrow yet, so fund it for real before settling
    w3, dep = stack.w3(), stack.deployment()
    key = stack.escrow_fund(job_id, 9 * PRICE)
    # A settlement worker that is killed (SIGKILL, the whole worker: main and pool process) the moment its
    # release() transaction is mined, before it records anything: the worst place to crash.
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text(
        "import os, signal\n"
        "from contracts import bindings\n"
        "_release = bindings.JobEscrow.release_columns\n"
        "def _release_then_die(self, *args, **kwargs):\n"
        "    _release(self, *args, **kwargs)\n"
        "    os.killpg(os.getpgrp(), signal.SIGKILL)\n"
        "bindings.JobEscrow.release_columns = _release_then_die\n"
    )
    saved = dict(stack.env)
    stack.env["PYTHONPATH"] = str(crash)
    stack.start_settlement()
    stack.env.clear()
    stack.env.update(saved)
    escrow = JobEscrow(w3, dep.escrow)
    accepted = _accepted_per_node(stack, job_id)
    wallets = {a.node_id: Web3.to_checksum_address(json.loads(a.config.read_text())["wallet_address"]) for a in agents}
    wait_for(lambda: escrow.job_of(key).released > 0, timeout=60, what="the doomed worker to broadcast")
    settlement = next(c for c in stack.supervisor.children if c.name == "settlement")
    settlement.process.wait(timeout=30)
    assert settlement.process.returncode != 0
    stack.supervisor.children.remove(settlement)
    paid_once = {node: escrow.credit_of(wallet) for node, wallet in wallets.items()}
    assert paid_once == {node: accepted[node] * PRICE for node in wallets}
    # An honest worker takes over: it finds the payouts paid on chain and records them; nobody is paid twice.
    stack.start_settlement()
    wait_for(lambda: _settled(stack, agents, {n: accepted[n] * PRICE for n in wallets}), timeout=60,
             what="the recovered payouts to be recorded")  # fmt: skip
    assert {node: escrow.credit_of(wallet) for node, wallet in wallets.items()} == paid_once
    wait_for(lambda: _reconciled(stack), timeout=30, what="the ledger to match the chain")


@pytest.mark.parametrize("stack", [{"settlement": False}], indirect=True)
def test_payouts_wait_while_the_chain_is_down_and_settle_when_it_is_back(stack: Stack) -> None:
    agents = [stack.agent("miner-a"), stack.agent("miner-b")]
    job_id = stack.post_job({"tasks": 3, "matrix_size": 16, "seed": 2}, replication=2, on_chain_extra="0")
    stack.wait_job(job_id)
    accepted = _accepted_per_node(stack, job_id)
    port = stack.chain_stop()
    stack.start_settlement()
    settlement = next(c for c in stack.supervisor.children if c.name == "settlement")
    wait_for(lambda: "Retry in" in settlement.log_path.read_text(), timeout=60, what="the worker to wait and retry")
    earnings = agents[0].api.get(f"{stack.url}/api/nodes/me/earnings/", timeout=10).json()
    assert int(earnings["pending"]) == accepted[agents[0].node_id] * PRICE
    assert earnings["credit"] is None
    stack.chain_start(port=port)  # the same chain, from its saved state
    wait_for(lambda: _settled(stack, agents, {n: c * PRICE for n, c in accepted.items()}), timeout=120,
             what="payouts to settle once the chain is back")  # fmt: skip
    wait_for(lambda: _reconciled(stack), timeout=30, what="the ledger to match the chain")
