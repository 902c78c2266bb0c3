"""kill -9 of every process type mid-job, each restarted as a supervisor would: the job completes, no task is lost
or failed, no replica is paid twice, nothing is paid that was not accepted, and the ledger matches the chain
(tests/faults/injection.py; the recovery times are in docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.injection import FAULTS, Market, market

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    with market(tmp_path_factory.mktemp("faults")) as started:
        yield started


@pytest.mark.parametrize("fault", FAULTS)
def test_the_market_carries_on_when_a_process_is_killed(running: Market, fault: str) -> None:
    outcome = running.inject(fault)
    assert outcome.problems == [], outcome.problems
