"""Money under concurrency and replays, on a real Anvil and the real database: two settlement runs at once pay
nobody twice, and the chain reader reading the same blocks again records nothing twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from web3 import Web3

from contracts.deploy import Deployment
from marketplace.jobs.models import JobState
from marketplace.payments import chain, services
from marketplace.payments.models import ChainCursor, Deposit, EntryKind, LedgerEntry, Payout, PayoutState
from tests.chain_fixtures import FEE_BPS, anvil, dep, poster_funds, sync, w3
from tests.factories import AssignmentFactory, JobFactory, NodeFactory, TaskFactory, UserFactory

__all__ = ["anvil", "dep", "w3"]  # fixtures
PRICE = 10**18


def _payouts(job_count: int, per_job: int) -> list[Any]:
    """Running jobs with `per_job` accepted assignments each, on distinct nodes, each with its pending payout."""
    jobs = []
    for j in range(job_count):
        job = JobFactory(state=JobState.RUNNING, task_count=per_job, replication=1, price_per_replica=PRICE)
        for i in range(per_job):
            node = NodeFactory(operator=UserFactory(username=f"op{j}-{i}"), wallet_address=f"0x{j + 1:02x}{i + 1:038x}")
            assignment = AssignmentFactory(task=TaskFactory(job=job, index=i), node=node, state="accepted")
            services.payout_create(assignment_id=assignment.id)
        jobs.append(job)
    return jobs


@pytest.mark.django_db(transaction=True)
def test_two_settlement_runs_at_once_pay_every_payout_exactly_once(w3: Web3, dep: Deployment) -> None:
    jobs = _payouts(3, 4)
    for who, job in enumerate(jobs, start=1):
        poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS), who=who)
    sync(w3, dep)
    assert Payout.objects.filter(state=PayoutState.PENDING).count() == 12
    errors: list[BaseException] = []

    def run() -> None:
        try:
            services.payouts_settle(w3=w3, escrow=chain.escrow(w3, signed=True), from_block=dep.block_number)
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    # Whatever the interleaving, a payout still `sending` is recovered by the next run.
    services.payouts_settle(w3=w3, escrow=chain.escrow(w3, signed=True), from_block=dep.block_number)
    assert set(Payout.objects.values_list("state", flat=True)) == {PayoutState.SETTLED}
    escrow = chain.escrow(w3)
    for payout in Payout.objects.all():
        assert escrow.credit_of(Web3.to_checksum_address(payout.payee)) == PRICE  # paid once, not twice
    assert escrow.credit_of(dep.treasury) == 12 * (PRICE * FEE_BPS // 10_000)
    assert LedgerEntry.objects.filter(kind=EntryKind.PAYOUT).count() == 12
    assert services.reconcile(w3=w3, escrow=escrow, from_block=dep.block_number) == []


@pytest.mark.django_db
def test_reading_the_same_blocks_again_records_no_deposit_twice(w3: Web3, dep: Deployment) -> None:
    (job,) = _payouts(1, 2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    first = sync(w3, dep)
    assert first.deposits == 1
    ledger = list(LedgerEntry.objects.order_by("idempotency_key").values_list("idempotency_key", "amount"))
    # A restart from an old cursor (or a reader that lost its place) replays every block since the deployment.
    ChainCursor.objects.update(block=dep.block_number - 1)
    again = sync(w3, dep)
    assert again.deposits == 0
    assert Deposit.objects.count() == 1
    assert list(LedgerEntry.objects.order_by("idempotency_key").values_list("idempotency_key", "amount")) == ledger
    assert services.reconcile(w3=w3, escrow=chain.escrow(w3), job_id=job.id) == []
