"""`python manage.py chain deploy|faucet|status|serve` against real Anvil processes."""

from __future__ import annotations

import fcntl
import io
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from web3 import Web3

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import load_deployment
from marketplace.core.ports import free_port

REMOTE_CHAIN_ID = 11155111  # Sepolia's id, served by a local Anvil: a chain the command must treat as not local
SOMEONE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture(scope="module")
def local_chain() -> Iterator[devchain.DevChain]:
    with devchain.start() as chain:
        yield chain


@pytest.fixture(scope="module")
def remote_chain() -> Iterator[devchain.DevChain]:
    with devchain.start(chain_id=REMOTE_CHAIN_ID) as chain:
        yield chain


@pytest.fixture
def chain_dir(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings.CHAIN_DIR = tmp_path / "chain"
    settings.CHAIN_DEPLOYMENTS_FILE = settings.CHAIN_DIR / "deployments.json"
    monkeypatch.delenv("HASHWORK_DEPLOYER_KEY", raising=False)
    return Path(settings.CHAIN_DIR)


@pytest.fixture
def on_local(settings: Any, chain_dir: Path, local_chain: devchain.DevChain) -> devchain.DevChain:
    settings.ETH_RPC_URL = local_chain.url
    return local_chain


@pytest.fixture
def on_remote(settings: Any, chain_dir: Path, remote_chain: devchain.DevChain) -> devchain.DevChain:
    settings.ETH_RPC_URL = remote_chain.url
    return remote_chain


def chain(*args: str) -> str:
    out = io.StringIO()
    call_command("chain", *args, stdout=out)
    return out.getvalue()


def test_deploy_records_the_contracts_and_status_shows_them(on_local: devchain.DevChain) -> None:
    deployed = chain("deploy", "--fee-bps", "300")

    deployment = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, 31337)
    w3 = connect(on_local.url)
    assert deployment.escrow_contract(w3).fee_bps() == 300
    assert deployment.token_contract(w3).has_code()
    assert f"JobEscrow     {deployment.escrow}  (fee 300 bps)" in deployed
    status = chain("status", SOMEONE)
    assert "Chain       31337 (local)" in status
    assert f"Escrow      JobEscrow {deployment.escrow}: holds 0 HWC, fee 300 bps" in status
    assert f"address     {SOMEONE}: " in status


def test_deploy_takes_the_treasury_and_operator_given(on_local: devchain.DevChain) -> None:
    treasury, operator = (Web3.to_checksum_address(secrets.token_bytes(20)) for _ in range(2))

    chain("deploy", "--treasury", treasury, "--operator", operator)

    deployment = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, 31337)
    escrow = deployment.escrow_contract(connect(on_local.url))
    assert escrow.treasury() == treasury
    assert escrow.has_role(escrow.PAYOUT_ROLE, operator)
    assert (deployment.treasury, deployment.operator) == (treasury, operator)


def test_the_faucet_mints_tokens_and_tops_up_gas_on_a_local_chain(on_local: devchain.DevChain) -> None:
    chain("deploy")
    newcomer = Web3.to_checksum_address(secrets.token_bytes(20))

    output = chain("faucet", newcomer, "12.5")

    w3 = connect(on_local.url)
    token = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, 31337).token_contract(w3)
    assert token.balance_of(newcomer) == 12_500_000_000_000_000_000
    assert w3.eth.get_balance(newcomer) == 10**18
    assert f"Minted 12.5 HWC to {newcomer} on chain 31337; it now holds 12.5 HWC and 1 ETH." in output


def test_the_faucet_refuses_a_chain_that_is_not_local(on_remote: devchain.DevChain) -> None:
    with pytest.raises(CommandError, match=r"only on local chains \(chain id 31337\).*chain 11155111"):
        chain("faucet", SOMEONE, "5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["faucet", "0x1234", "5"], "ADDRESS '0x1234' is not an Ethereum address"),
        (["faucet", SOMEONE.lower().replace("c", "C", 1), "5"], "ADDRESS .* has a wrong checksum"),
        (["faucet", SOMEONE, "many"], "AMOUNT 'many' is not a number of tokens"),
        (["faucet", SOMEONE, "0"], "AMOUNT '0' must be a positive number"),
        (["faucet", SOMEONE, "-3"], "AMOUNT '-3' must be a positive number"),
        (["faucet", SOMEONE, "0.0000000000000000001"], "AMOUNT .* has more than 18 decimals"),
        (["faucet", SOMEONE, "1", "--eth", "x"], "--eth 'x' is not a number"),
        (["deploy", "--fee-bps", "1001"], "--fee-bps 1001 is out of range"),
        (["deploy", "--treasury", "nobody"], "--treasury 'nobody' is not an Ethereum address"),
        (["status", "0xabc"], "ADDRESS '0xabc' is not an Ethereum address"),
    ],
)
def test_bad_arguments_are_named_before_any_chain_is_touched(
    settings: Any, chain_dir: Path, args: list[str], message: str
) -> None:
    settings.ETH_RPC_URL = "http://127.0.0.1:9"  # nothing answers there: the arguments must fail first

    with pytest.raises(CommandError, match=message):
        chain(*args)


def test_deploy_on_a_chain_that_is_not_local_needs_the_deployer_key(
    on_remote: devchain.DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CommandError, match=r"HASHWORK_DEPLOYER_KEY is not set\. Chain 11155111 is not a local chain"):
        chain("deploy")
    monkeypatch.setenv("HASHWORK_DEPLOYER_KEY", "0xnot-a-key")
    with pytest.raises(CommandError, match="HASHWORK_DEPLOYER_KEY must be 0x followed by 64 hex digits"):
        chain("deploy")

    key = devchain.dev_keys(2)[1]
    monkeypatch.setenv("HASHWORK_DEPLOYER_KEY", key)
    chain("deploy")

    deployment = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, REMOTE_CHAIN_ID)
    assert deployment.admin == connect(on_remote.url).eth.account.from_key(key).address


def test_status_without_a_deployment_says_how_to_deploy(on_local: devchain.DevChain) -> None:
    with pytest.raises(CommandError, match=r"no deployment for chain 31337 .* run `python manage.py chain deploy`"):
        chain("status")


def test_status_notices_a_recorded_deployment_that_has_no_code(on_local: devchain.DevChain) -> None:
    chain("deploy")
    path = Path(django_settings.CHAIN_DEPLOYMENTS_FILE)
    recorded = json.loads(path.read_text())
    recorded["31337"]["escrow"] = Web3.to_checksum_address(secrets.token_bytes(20))
    path.write_text(json.dumps(recorded))

    with pytest.raises(CommandError, match="there is no code there"):
        chain("status")


def test_help_describes_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        call_command("chain", "--help")
    assert exited.value.code == 0
    overview = capsys.readouterr().out
    with pytest.raises(SystemExit):
        call_command("chain", "faucet", "--help")
    faucet = capsys.readouterr().out

    for action in ("deploy", "faucet", "status", "serve", "ETH_RPC_URL", "HASHWORK_DEPLOYER_KEY"):
        assert action in overview
    for word in ("ADDRESS", "AMOUNT", "--eth", "local"):
        assert word in faucet


def _lock_is_free(state_file: Path) -> bool:
    with (state_file.parent / (state_file.name + ".lock")).open("wb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_without_eth_rpc_url_the_projects_anvil_keeps_the_deployment_between_calls(
    settings: Any, chain_dir: Path
) -> None:
    settings.ETH_RPC_URL = None

    deployed = chain("deploy")
    minted = chain("faucet", SOMEONE, "7")
    status = chain("status", SOMEONE)

    escrow = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, 31337).escrow
    assert "Started the project's Anvil" in deployed
    assert "it now holds 7 HWC" in minted
    assert f"JobEscrow {escrow}" in status
    assert f"address     {SOMEONE}: 10000 ETH, 7 HWC" in status
    state_file = chain_dir / "anvil-state.json"
    assert state_file.stat().st_size > 0
    assert _lock_is_free(state_file), "an Anvil started by the command is still running"


def test_serve_runs_the_projects_anvil_on_the_port_given_until_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"ETH_RPC_URL", "DATABASE_URL"}}
    env["HASHWORK_VAR_DIR"] = str(tmp_path)
    manage = Path(django_settings.BASE_DIR) / "manage.py"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(manage), "chain", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = _wait_for_url(server, timeout=60)
        assert url == f"http://127.0.0.1:{port}"
        assert connect(url).eth.chain_id == 31337
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
    assert "Stopped the project's Anvil; its state is saved." in output
    assert (tmp_path / "chain" / "anvil-state.json").stat().st_size > 0
    assert _lock_is_free(tmp_path / "chain" / "anvil-state.json")


def _wait_for_url(process: subprocess.Popen[bytes], *, timeout: float) -> str:
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            for line in seen.decode(errors="replace").splitlines():
                if line.strip().startswith("export ETH_RPC_URL="):
                    return line.split("=", 1)[1].strip()
    raise AssertionError(f"chain serve printed no URL within {timeout}s:\n{seen.decode(errors='replace')}")


@pytest.mark.django_db
def test_fund_dev_funds_a_draft_job_with_what_it_needs_and_the_extra(on_local: devchain.DevChain) -> None:
    from eth_account import Account

    from marketplace.core.exceptions import Conflict
    from marketplace.payments.services import chain_sync, escrow_bind, escrow_key, funding_required
    from tests.factories import JobFactory

    call_command("chain", "deploy", stdout=io.StringIO())
    job = JobFactory(task_count=2, replication=2, price_per_replica=10**18)
    out = io.StringIO()
    call_command("chain", "fund-dev", str(job.id), "--extra", "0.5", stdout=out)
    assert "Funded job" in out.getvalue()
    w3 = connect(on_local.url)
    escrow = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id).escrow_contract(w3)
    on_chain = escrow.job_of(escrow_key(job.id))
    assert on_chain.remaining == funding_required(job=job, fee_bps=250) + 10**18 // 2
    assert on_chain.max_payouts == 4  # the job's terms: tasks × replication payouts of at most the price
    assert on_chain.max_payout == 10**18
    # Once the marketplace has seen the deposit, another wallet cannot take over the job's escrow id.
    dep = load_deployment(django_settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
    chain_sync(w3=w3, escrow=escrow, chain_id=dep.chain_id, start_block=dep.block_number)
    with pytest.raises(Conflict, match="which has funded it"):
        escrow_bind(job_id=job.id, wallet=Account.from_key(devchain.dev_keys(3)[2]).address)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-uuid"], "is not a job id"),
        (["00000000-0000-0000-0000-000000000000"], "There is no job"),
        (["{running}"], "only a draft job"),
        (["{draft}", "--extra", "-1"], "--extra"),
        (["{draft}", "--account", "12"], "--account 12"),
    ],
)
def test_fund_dev_names_what_is_wrong_before_touching_the_chain(args: list[str], message: str) -> None:
    from marketplace.jobs.models import JobState
    from tests.factories import JobFactory

    jobs = {"draft": JobFactory(), "running": JobFactory(state=JobState.RUNNING)}
    argv = [a.format(**{k: str(v.id) for k, v in jobs.items()}) for a in args]
    with pytest.raises(CommandError, match=message):
        call_command("chain", "fund-dev", *argv)
