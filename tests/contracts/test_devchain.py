"""The dev chain itself: reads on "latest" stay answerable while blocks are mined back to back."""

from __future__ import annotations

import threading
import time

from contracts.bindings import JobEscrow
from contracts.deploy import Deployment
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
            except Exception as exc:  # noqa: BLE001 - every failed read is the finding
                errors.append(exc)
            if time.monotonic() - started > 30:
                break
    finally:
        stop.set()
        miner.join(timeout=30)
    assert len(mined) >= 50, f"only {len(mined)} blocks mined: the race was not exercised"
    assert reads > 100
    assert errors == [], f"{len(errors)} of {reads + len(errors)} reads failed, first: {errors[0]}"
