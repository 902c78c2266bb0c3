"""The chain reader asks for logs in bounded block ranges (LOG_BLOCK_RANGE) and halves a range the provider
refuses, so a provider that caps eth_getLogs (most do, at 2 000 or 10 000 blocks) never stops deposits from being
seen; every deposit is recorded exactly once, whatever the windows.

Real Anvil, with deposits spread over more than twice the range (anvil_mine between them). The provider is web3's
own HTTP provider, subclassed to record each eth_getLogs call's block range (observation); for the refusals, it
answers a call wider than its cap the way real providers do (a JSON-RPC error with their wording)."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import Web3RPCError
from web3.providers.rpc import HTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from contracts.deploy import Deployment
from contracts.logs import in_ranges, is_range_refusal
from marketplace.jobs.models import Job, JobState
from marketplace.payments import chain, services
from marketplace.payments.models import ChainCursor, Deposit, EntryKind, LedgerEntry
from tests.chain_fixtures import anvil, dep, poster_funds, w3
from tests.factories import JobFactory

__all__ = ["anvil", "dep", "w3"]  # fixtures
pytestmark = pytest.mark.django_db

PRICE = 10**18
GAP_BLOCKS = 23


class RecordingProvider(HTTPProvider):
    """Records the [fromBlock, toBlock] of every eth_getLogs; refuses a wider one than `cap` (if set)."""

    def __init__(self, url: str, cap: int | None = None) -> None:
        super().__init__(url)
        self.cap = cap
        self.asked: list[tuple[int, int]] = []
        self.refused: list[tuple[int, int]] = []

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if self.cap is not None and hi - lo + 1 > self.cap:
                self.refused.append((lo, hi))
                message = f"exceed maximum block range: {self.cap}"  # geth's words
                return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": message}}
            self.asked.append((lo, hi))
        return super().make_request(method, params)


def _observed(url: str, cap: int | None = None) -> tuple[Web3, RecordingProvider]:
    provider = RecordingProvider(url, cap)
    return Web3(provider), provider


def _spread_deposits(w3: Web3, dep: Deployment, count: int) -> list[Job]:
    """`count` jobs funded in blocks GAP_BLOCKS apart (empty blocks mined between them)."""
    jobs = []
    for _ in range(count):
        job = JobFactory(task_count=1, replication=1, price_per_replica=PRICE)
        poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=250))
        w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(GAP_BLOCKS)])
        jobs.append(job)
    return jobs


def _sync(w3: Web3, dep: Deployment) -> services.SyncReport:
    return services.chain_sync(w3=w3, escrow=chain.escrow(w3), chain_id=dep.chain_id, start_block=dep.block_number)


def _assert_contiguous(windows: list[tuple[int, int]], first: int, last: int) -> None:
    """The windows cover first..last in order, with no gap and no overlap (each block is read once)."""
    expected = first
    for lo, hi in windows:
        assert lo == expected, windows
        expected = hi + 1
    assert expected == last + 1, windows


def _each_deposit_once(jobs: list[Job]) -> None:
    for job in jobs:
        assert Deposit.objects.filter(job=job).count() == 1
        assert LedgerEntry.objects.filter(job=job, kind=EntryKind.DEPOSIT).count() == 1
        assert Job.objects.get(id=job.id).state == JobState.FUNDED


def test_deposits_spread_over_many_ranges_are_each_seen_once_in_bounded_calls(
    w3: Web3, dep: Deployment, anvil: Any, settings: Any
) -> None:
    settings.LOG_BLOCK_RANGE = 10
    jobs = _spread_deposits(w3, dep, 5)
    head = w3.eth.block_number
    assert head - dep.block_number > 2 * 10 * 5  # deposits far apart, in many windows
    observed, provider = _observed(anvil.url)
    report = _sync(observed, dep)
    assert report.deposits == 5
    assert sorted(report.funded_jobs) == sorted(job.id for job in jobs)
    _each_deposit_once(jobs)
    # Two events per window (JobFunded, JobRefunded), each call at most 10 blocks, every block read once per event.
    assert provider.asked
    assert all(hi - lo + 1 <= 10 for lo, hi in provider.asked)
    _assert_contiguous(provider.asked[::2], dep.block_number, head)
    assert provider.asked[::2] == provider.asked[1::2]
    assert ChainCursor.objects.get(name="escrow-events").block == head
    # Read again: nothing new, and no block before the cursor is asked for again.
    provider.asked.clear()
    assert _sync(observed, dep).deposits == 0
    assert provider.asked == []
    assert Deposit.objects.count() == 5


def test_a_range_the_provider_refuses_is_halved_and_no_deposit_is_lost_or_doubled(
    w3: Web3, dep: Deployment, anvil: Any, settings: Any
) -> None:
    settings.LOG_BLOCK_RANGE = 40
    jobs = _spread_deposits(w3, dep, 4)
    head = w3.eth.block_number
    observed, provider = _observed(anvil.url, cap=7)
    report = _sync(observed, dep)
    assert report.deposits == 4
    _each_deposit_once(jobs)
    # 40 → 20 → 10 → 5 blocks: refused three times, then every call is within the provider's cap.
    assert [hi - lo + 1 for lo, hi in provider.refused] == [40, 20, 10]
    assert all(hi - lo + 1 <= 5 for lo, hi in provider.asked)
    _assert_contiguous(provider.asked[::2], dep.block_number, head)
    assert ChainCursor.objects.get(name="escrow-events").block == head


def test_a_provider_error_that_is_not_about_the_range_stops_the_read_where_it_was(
    w3: Web3, dep: Deployment, anvil: Any, settings: Any
) -> None:
    settings.LOG_BLOCK_RANGE = 10
    jobs = _spread_deposits(w3, dep, 2)
    observed, provider = _observed(anvil.url)
    calls = 0
    original = provider.make_request

    def failing_on_the_fifth_logs_call(method: RPCEndpoint, params: Any) -> RPCResponse:
        nonlocal calls
        if method == "eth_getLogs":
            calls += 1
            if calls == 5:
                return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "internal error"}}
        return original(method, params)

    provider.make_request = failing_on_the_fifth_logs_call  # type: ignore[method-assign]
    with pytest.raises(Web3RPCError, match="internal error"):
        _sync(observed, dep)
    # Two windows were read (four calls); the cursor is at the end of the second, and the retry goes on from there.
    assert ChainCursor.objects.get(name="escrow-events").block == dep.block_number - 1 + 20
    provider.make_request = original  # type: ignore[method-assign]
    _sync(observed, dep)
    _each_deposit_once(jobs)


@pytest.mark.parametrize(
    "message",
    [
        "exceed maximum block range: 5000",
        "query exceeds max block range 1000",
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range",
        "query returned more than 10000 results",
        "eth_getLogs is limited to a 10,000 range",
        "block range is too wide",
        "Block range limit exceeded",
        "range too large",
    ],
)
def test_the_refusals_of_real_providers_are_recognised(message: str) -> None:
    assert is_range_refusal(ValueError(message))


@pytest.mark.parametrize("message", ["internal error", "execution reverted", "too many requests", "rate limited"])
def test_other_errors_are_not_taken_for_range_refusals(message: str) -> None:
    assert not is_range_refusal(ValueError(message))


def test_windows_never_exceed_the_range_and_cover_every_block_once() -> None:
    seen = [(lo, hi) for lo, hi, _ in in_ranges(lambda lo, hi: None, from_block=5, to_block=47, max_range=10)]
    assert seen == [(5, 14), (15, 24), (25, 34), (35, 44), (45, 47)]
    assert list(in_ranges(lambda lo, hi: None, from_block=9, to_block=8, max_range=10)) == []
