"""The dev chains themselves: Anvil and Hardhat Network start on a free port and stop with their process, and reads
on "latest" stay answerable while blocks are mined back to back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from eth_account import Account

from contracts import devchain
from contracts.bindings import JobEscrow
from contracts.deploy import Deployment
from contracts.errors import DevChainError
from tests.contracts.helpers import Actors


def test_reads_on_latest_never_meet_a_pruned_state_while_blocks_are_mined(
    deployment: Deployment, actors: Actors
) -> None:
    """With `--prune-history` and no states kept, about 1 read in 100 raced a new block and was answered
    `BlockOutOfRangeError` (a red CI run of test_money). Anvil now keeps some states: no read may fail."""
    w3 = actors.admin.w3
    escrow = JobEscrow(w3, deployment.escrow)
    token = deployment.token_contract(w3, actors.stranger)
    stop = threading.Event()
    mined: list[int] = []

    def mine() -> None:
        while not stop.is_set():
            token.transfer(actors.node.address, 1)
            mined.append(1)

    miner = threading.Thread(target=mine, daemon=True)
    miner.start()
    errors: list[Exception] = []
    reads = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 4 or len(mined) < 50:
            try:
                escrow.credit_of(actors.node.address)
                reads += 1
            except Exception as exc:  # every failed read is the finding
                errors.append(exc)
            if time.monotonic() - started > 30:
                break
    finally:
        stop.set()
        miner.join(timeout=30)
    assert len(mined) >= 50, f"only {len(mined)} blocks mined: the race was not exercised"
    assert reads > 100
    assert errors == [], f"{len(errors)} of {reads + len(errors)} reads failed, first: {errors[0]}"


@pytest.mark.parametrize(("engine", "client"), [("anvil", "anvil/"), ("hardhat", "HardhatNetwork/")])
def test_each_engine_starts_on_a_free_local_port_as_chain_31337_and_stops_on_exit(
    engine: devchain.Engine, client: str
) -> None:
    start = devchain.start_hardhat if engine == "hardhat" else devchain.start

    with start() as chain:
        assert (chain.engine, chain.url) == (engine, f"http://127.0.0.1:{chain.port}")
        assert devchain.rpc(chain.url, "eth_chainId") == hex(devchain.ANVIL_CHAIN_ID)
        assert str(devchain.rpc(chain.url, "web3_clientVersion")).startswith(client)
        # The same development accounts on either chain, so the same keys sign.
        accounts = devchain.rpc(chain.url, "eth_accounts")
        assert isinstance(accounts, list)
        assert [a.lower() for a in accounts[:3]] == [Account.from_key(k).address.lower() for k in devchain.dev_keys(3)]
        assert chain.running
    assert not chain.running
    assert chain.process.returncode is not None


def test_hardhat_network_refuses_a_state_file(tmp_path: Path) -> None:
    with pytest.raises(DevChainError, match="needs Anvil"):
        devchain.start(engine="hardhat", state_file=tmp_path / "state.json")
