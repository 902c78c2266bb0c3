"""A settlement transaction priced under the chain's base fee is not left stuck: the sender re-sends the same nonce
with both fees raised by at least 12.5 % (EIP-1559 replacement) until one version is mined, and the payout lands
exactly once. Before, the sender sent once and waited: an underpriced release() held the operator's nonce, and so
every later payout, until the receipt timeout, and again after it.

Real Anvil with automatic mining off: the test mines the blocks itself, each with a base fee just above the first
version's max fee (anvil_setNextBlockBaseFeePerGas), so only a re-priced version can be included. web3's HTTP
provider is subclassed to record the raw transactions sent (observation)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.providers.rpc import HTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from contracts import devchain
from contracts.bindings import JobEscrow, Payout, escrow_job_id
from contracts.deploy import Deployment
from contracts.errors import TransactionTimeout
from contracts.sender import Sender
from tests.chain_fixtures import anvil, dep, dev_account, fund_raw, w3

__all__ = ["anvil", "dep", "w3"]  # fixtures

PAY = 10**18
PAYEE = Web3.to_checksum_address("0x" + "5e" * 20)


class RecordingProvider(HTTPProvider):
    """Records the hash the node answers for every raw transaction sent."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[str] = []

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        answer = super().make_request(method, params)
        if method == "eth_sendRawTransaction" and "result" in answer:
            self.sent.append(str(answer["result"]))
        return answer


def _rpc(w3: Web3, method: str, *params: Any) -> Any:
    return w3.provider.make_request(RPCEndpoint(method), list(params)).get("result")


@pytest.fixture
def funded(w3: Web3, dep: Deployment) -> bytes:
    """An escrow job of dev account 1 with room for ten payouts of PAY."""
    poster = dev_account(w3, 1)
    key = escrow_job_id(poster.address, (1).to_bytes(12, "big"))
    deadline = int(w3.eth.get_block("latest")["timestamp"]) + 7 * 24 * 3600
    fund_raw(w3, dep, key, 10 * PAY + PAY, who=1, deadline=deadline, max_payouts=10, max_payout=PAY)
    return key


@pytest.fixture
def manual_mining(w3: Web3) -> Iterator[None]:
    assert _rpc(w3, "evm_setAutomine", False) is None
    yield
    _rpc(w3, "anvil_dropAllTransactions")  # nothing left pending for the tests after this one
    _rpc(w3, "evm_setAutomine", True)


def _operator(url: str, **options: Any) -> tuple[Sender, RecordingProvider]:
    provider = RecordingProvider(url)
    return Sender(Web3(provider), devchain.dev_keys(1)[0], **options), provider


def _pending_max_fee(w3: Web3, address: str) -> int | None:
    pending = _rpc(w3, "txpool_content")["pending"]
    mine = {k.lower(): v for k, v in pending.items()}.get(address.lower(), {})
    fees = [int(tx["maxFeePerGas"], 16) for tx in mine.values()]
    return max(fees) if fees else None


def _mine_above(w3: Web3, address: str, done: threading.Event, *, seconds: float) -> int:
    """Mine a block every 0.1 s with a base fee one wei above the first version's max fee, until `done`; returns
    that first max fee."""
    first: int | None = None
    deadline = time.monotonic() + seconds
    while not done.is_set() and time.monotonic() < deadline:
        if first is None:
            first = _pending_max_fee(w3, address)
        if first is not None:
            _rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(first + 1))
            _rpc(w3, "evm_mine")
        time.sleep(0.1)
    assert first is not None, "the sender never sent the transaction"
    return first


def _in_thread(call: Any) -> tuple[threading.Thread, threading.Event, list[Any]]:
    done, out = threading.Event(), []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # the test asserts on it
            out.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, out


def test_an_underpriced_payout_is_re_priced_until_mined_and_lands_once(
    w3: Web3, dep: Deployment, funded: bytes, anvil: Any, manual_mining: None
) -> None:
    operator, provider = _operator(anvil.url, bump_after=0.3, max_bumps=4, receipt_timeout=20)
    escrow = JobEscrow(operator.w3, dep.escrow, operator)
    nonce_before = w3.eth.get_transaction_count(operator.address)
    thread, done, out = _in_thread(lambda: escrow.release(funded, [Payout(0, PAYEE, PAY)]))
    first_fee = _mine_above(w3, operator.address, done, seconds=20)
    thread.join(5)
    (released,) = out
    assert not isinstance(released, Exception), released
    assert released.count == 1
    # The first version was never mined; a re-priced one, same nonce, fees up by at least 12.5 %, was.
    assert len(provider.sent) >= 2
    first_hash, mined_hash = provider.sent[0], released.receipt["transactionHash"].to_0x_hex()
    assert mined_hash != first_hash
    assert mined_hash in provider.sent
    with pytest.raises(TransactionNotFound):
        w3.eth.get_transaction_receipt(first_hash)
    mined = w3.eth.get_transaction(mined_hash)
    assert mined["nonce"] == nonce_before
    assert mined["maxFeePerGas"] * 8 >= first_fee * 9
    assert w3.eth.get_transaction_count(operator.address) == nonce_before + 1
    assert escrow.credit_of(PAYEE) == PAY
    # The same payout again (a settlement worker re-sending after a crash) is skipped: paid once.
    _rpc(w3, "evm_setAutomine", True)
    again = escrow.release(funded, [Payout(0, PAYEE, PAY)])
    assert again.count == 0
    assert escrow.credit_of(PAYEE) == PAY
    assert escrow.payout_used(funded, 0)


def test_a_transaction_mined_at_once_is_not_re_priced(w3: Web3, dep: Deployment, funded: bytes, anvil: Any) -> None:
    operator, provider = _operator(anvil.url, bump_after=0.3, max_bumps=4)
    escrow = JobEscrow(operator.w3, dep.escrow, operator)
    released = escrow.release(funded, [Payout(0, PAYEE, PAY)])
    assert released.count == 1
    time.sleep(0.4)  # past bump_after: the receipt was there, nothing more is sent
    assert len(provider.sent) == 1
    assert escrow.credit_of(PAYEE) == PAY


def test_re_pricing_stops_at_the_fee_cap_and_the_wait_ends_with_a_timeout(
    w3: Web3, dep: Deployment, funded: bytes, anvil: Any, manual_mining: None
) -> None:
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tip = int(w3.eth.max_priority_fee)
    cap = (2 * base + tip) * 5 // 4  # room for one bump of 12.5 %, not two
    operator, provider = _operator(anvil.url, bump_after=0.2, max_bumps=4, receipt_timeout=1.0, max_fee_per_gas=cap)
    escrow = JobEscrow(operator.w3, dep.escrow, operator)
    nonce_before = w3.eth.get_transaction_count(operator.address)
    thread, done, out = _in_thread(lambda: escrow.release(funded, [Payout(0, PAYEE, PAY)]))
    deadline = time.monotonic() + 15
    while _pending_max_fee(w3, operator.address) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pending_max_fee(w3, operator.address) == 2 * base + tip
    # From now on blocks ask more than the cap: no version can be mined.
    while not done.is_set() and time.monotonic() < deadline:
        _rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(cap + 1))
        _rpc(w3, "evm_mine")
        time.sleep(0.1)
    thread.join(5)
    (error,) = out
    assert isinstance(error, TransactionTimeout), error
    assert "1 fee bumps" in str(error)
    assert len(provider.sent) == 2
    assert w3.eth.get_transaction_count(operator.address) == nonce_before
    assert escrow.credit_of(PAYEE) == 0
