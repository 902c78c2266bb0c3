"""Two demos in one directory, and a var/ that outlived its chain, are refused at start with what to do. Before, a
second `make demo` in the same checkout shared the first one's var/ (database, chain state, Redis) and died at
reconcile with "The ledger does not match the chain"; and a var/ whose chain state was reset or deleted while its
database kept the old jobs failed every later demo at reconcile, with dozens of MISMATCH lines and no hint.

The lock is held by a real process (the demo's own lock service); the second demo is the real `manage.py demo`,
which must refuse before it starts anything. The chain check runs the real demo command against a real Anvil that
does not hold the database's deposits; it stops before any service is started."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from web3 import Web3
from web3.types import RPCEndpoint

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import Deployment
from marketplace.core.pidlock import LockHeld, pid_lock
from marketplace.payments.services.deposits import chain_record_problem
from tests.chain_fixtures import anvil, dep, poster_funds, sync, w3
from tests.factories import JobFactory

__all__ = ["anvil", "dep", "w3"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]
HOLD = "import sys, time; from pathlib import Path; from marketplace.core.pidlock import pid_lock; " \
    "lock = pid_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"  # fmt: skip


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that holds tmp_path's demo lock, as a running demo does."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "demo.lock")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_demo_in_the_same_directory_refuses_at_once_naming_the_first(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "ETH_RPC_URL"}}
    env["HASHWORK_VAR_DIR"] = str(tmp_path)
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--timeout", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"Another demo (pid {holder.pid}) is running in {tmp_path}" in second.stderr, second.stderr
    assert f"kill {holder.pid}" in second.stderr
    assert "HASHWORK_VAR_DIR" in second.stderr
    assert time.monotonic() - started < 30  # Django's start-up, then out: nothing was started
    # Nothing of the running demo's var/ was touched: no database, no chain, no Redis, no logs were made.
    made = {p.name for p in tmp_path.iterdir()}
    assert not {"hashwork.sqlite3", "chain", "redis", "logs", "demo-summary.json"} & made, made
    assert holder.poll() is None


def test_the_lock_of_a_killed_demo_is_free(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(LockHeld) as held:
        pid_lock(tmp_path / "demo.lock")
    assert held.value.pid == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # The file still names the dead demo; the lock died with it.
    assert (tmp_path / "demo.lock").read_text().strip() == str(holder.pid)
    with pid_lock(tmp_path / "demo.lock"):
        assert (tmp_path / "demo.lock").read_text().strip() == str(os.getpid())


@pytest.fixture
def funded_job(w3: Web3, dep: Deployment, db: None) -> None:
    """A job whose deposit the database recorded from the module's chain."""
    from marketplace.payments import services

    job = JobFactory(task_count=1, replication=1, price_per_replica=10**18)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=250))
    assert sync(w3, dep).deposits == 1


@pytest.fixture
def fresh_chain() -> Iterator[devchain.DevChain]:
    """The same Anvil, started again with its state deleted."""
    with devchain.start() as chain:
        yield chain


def _demo(settings: Any, tmp_path: Path, rpc_url: str) -> None:
    """The real demo command on var/ = tmp_path (with the test's deployment file) and the chain at `rpc_url`."""
    (tmp_path / "chain").mkdir(exist_ok=True)
    shutil.copy(settings.CHAIN_DEPLOYMENTS_FILE, tmp_path / "chain" / "deployments.json")
    settings.VAR_DIR = tmp_path
    settings.ETH_RPC_URL = rpc_url
    level = logging.getLogger("marketplace").level
    try:
        call_command("demo", "--headless", "--timeout", "5", stdout=open(os.devnull, "w"))  # noqa: SIM115
    finally:
        logging.getLogger("marketplace").setLevel(level)


def test_a_database_that_outlived_its_chain_is_told_to_run_make_clean(
    funded_job: None, dep: Deployment, fresh_chain: devchain.DevChain, settings: Any, tmp_path: Path
) -> None:
    problem = chain_record_problem(w3=connect(fresh_chain.url), escrow_address=dep.escrow)
    assert problem is not None
    assert "latest block is 0" in problem
    with pytest.raises(CommandError) as refused:
        _demo(settings, tmp_path, fresh_chain.url)
    message = str(refused.value)
    assert "Run `make clean`" in message
    assert problem in message
    # It stopped before deploying anything on the chain it did not recognise.
    assert not connect(fresh_chain.url).eth.get_code(Web3.to_checksum_address(dep.escrow))
    assert not (tmp_path / "demo.lock").read_text()  # the lock was released


def test_a_chain_restored_to_before_a_recorded_deposit_is_noticed(
    w3: Web3, dep: Deployment, db: None, settings: Any
) -> None:
    from marketplace.payments import services

    before = w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    job = JobFactory(task_count=1, replication=1, price_per_replica=10**18)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=250))
    assert sync(w3, dep).deposits == 1
    assert chain_record_problem(w3=w3, escrow_address=dep.escrow) is None  # the chain it knows
    # An older state comes back (Anvil killed before it saved the newer one) and the chain moves on past it.
    assert w3.provider.make_request(RPCEndpoint("evm_revert"), [before])["result"] is True
    w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(20)])
    problem = chain_record_problem(w3=w3, escrow_address=dep.escrow)
    assert problem is not None
    assert f"deposit to job {job.id}" in problem
    assert "is not on this chain" in problem


def test_the_demos_own_chain_and_a_fresh_database_pass_the_check(
    funded_job: None, w3: Web3, dep: Deployment, fresh_chain: devchain.DevChain, settings: Any, tmp_path: Path
) -> None:
    from marketplace.payments.models import ChainCursor, Deposit, LedgerEntry

    assert chain_record_problem(w3=w3, escrow_address=dep.escrow) is None
    LedgerEntry.objects.all().delete()
    Deposit.objects.all().delete()
    ChainCursor.objects.all().delete()
    assert chain_record_problem(w3=connect(fresh_chain.url), escrow_address=dep.escrow) is None
