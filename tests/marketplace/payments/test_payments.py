"""Money on a real Anvil chain: deposits start jobs, accepted work is paid exactly once (also across a crash
between broadcast and recording), finished jobs close, refunds are seen, and the ledger reconciles."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from web3 import Web3

from contracts.bindings import JobEscrow
from contracts.bindings import Payout as ChainPayout
from contracts.deploy import Deployment
from marketplace.jobs import dispatch, verification
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Result
from marketplace.payments import chain, services
from marketplace.payments.models import Deposit, EntryKind, LedgerEntry, Payout, PayoutState
from marketplace.payments.services.payouts import _number
from tests.chain_fixtures import FEE_BPS, anvil, dep, dev_account, fund_raw, poster_funds, settle, sync, w3
from tests.conftest import make_node
from tests.factories import JobFactory, TaskFactory, UserFactory

PRICE = 10**18
__all__ = ["anvil", "dep", "w3"]  # fixtures


def _accepted_job(tasks: int = 2, replication: int = 2) -> tuple[Job, list[Any]]:
    """A running job whose every replica ran on one of `replication` nodes and was accepted by verification."""
    job = JobFactory(state=JobState.RUNNING, task_count=tasks, replication=replication, price_per_replica=PRICE)
    for i in range(tasks):
        TaskFactory(job=job, index=i, replicas_wanted=replication)
    # Replicas of one task go to distinct operators (Sybil rule); proven nodes are off probation.
    nodes = [
        make_node(UserFactory(username=f"op{i}"), name=f"n{i}", capabilities={"cpu_cores": 4}, slots=8, valid_count=1)
        for i in range(replication)
    ]
    dispatch.schedule()
    for assignment in Assignment.objects.filter(task__job=job):
        Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
        dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.SUBMITTED)
        result = Result(assignment=assignment, sha256="0" * 64, size=10, signature="0x" + "1" * 130)
        checksum = f"{assignment.task.index:064x}"
        result.artifact.save("r.json", ContentFile(json.dumps({"checksum": checksum}).encode()), save=False)
        result.save()
    for task in job.tasks.all():
        verification.task_verify(task_id=task.id)
    verification.job_complete_if_done(job_id=job.id)  # runs on commit in production
    return job, nodes


pytestmark = pytest.mark.django_db


def test_the_funding_requirement_is_every_replica_plus_the_contracts_fee_exactly() -> None:
    job = JobFactory(task_count=3, replication=2, price_per_replica=1_000_003)
    assert services.funding_required(job=job, fee_bps=250) == 6 * (1_000_003 + 1_000_003 * 250 // 10_000)
    assert services.fee_of(39, 250) == 0  # rounded down, as the contract does


def test_a_deposit_is_recorded_once_and_an_under_funded_job_waits(w3: Web3, dep: Deployment) -> None:
    job = JobFactory(task_count=2, replication=2, price_per_replica=PRICE)
    required = services.funding_required(job=job, fee_bps=FEE_BPS)
    poster_funds(w3, dep, job, required - 1)
    first = sync(w3, dep)
    assert first.deposits == 1
    assert first.funded_jobs == []
    assert Job.objects.get(id=job.id).state == JobState.DRAFT
    assert sync(w3, dep).deposits == 0  # the same block range is not read twice
    assert "Top it up with the difference" in Job.objects.get(id=job.id).state_reason
    # Topping up starts it.
    poster_funds(w3, dep, job, 1)
    second = sync(w3, dep)
    assert second.funded_jobs == [job.id]
    assert Job.objects.get(id=job.id).state == JobState.FUNDED
    assert Deposit.objects.filter(job=job).count() == 2
    assert sum(e.amount for e in LedgerEntry.objects.filter(job=job, kind=EntryKind.DEPOSIT)) == required


def test_money_sent_to_an_id_that_is_no_marketplace_job_is_recorded_nowhere(w3: Web3, dep: Deployment) -> None:
    deadline = w3.eth.get_block("latest")["timestamp"] + 86400
    key = bytes.fromhex(dev_account(w3).address[2:]) + b"\x01" * 12
    fund_raw(w3, dep, key, 5 * PRICE, who=1, deadline=deadline, max_payouts=1, max_payout=PRICE)
    report = sync(w3, dep)
    assert report.deposits == 0
    assert len(report.ignored) == 1
    assert not Deposit.objects.exists()
    assert not LedgerEntry.objects.exists()


def test_accepted_work_is_paid_exactly_once_and_the_ledger_reconciles(w3: Web3, dep: Deployment) -> None:
    job, nodes = _accepted_job(tasks=3, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    assert Payout.objects.filter(job=job).count() == 6
    report = settle(w3, dep)
    assert report.settled == 6
    assert len(report.transactions) == 1
    escrow = chain.escrow(w3)
    for persona in nodes:
        assert escrow.credit_of(Web3.to_checksum_address(persona.node.wallet_address)) == 3 * PRICE
    assert escrow.credit_of(dep.treasury) == 6 * (PRICE * FEE_BPS // 10_000)
    assert settle(w3, dep).settled == 0  # nothing pending: nothing sent again
    assert set(Payout.objects.values_list("payout_index", flat=True)) == set(range(6))
    assert all(p.state == PayoutState.SETTLED and p.tx_hash for p in Payout.objects.all())
    assert services.reconcile(w3=w3, escrow=escrow, from_block=dep.block_number) == []


def test_rejected_and_expired_work_is_never_paid(w3: Web3, dep: Deployment) -> None:
    job = JobFactory(state=JobState.RUNNING, task_count=1, replication=1, price_per_replica=PRICE)
    TaskFactory(job=job, index=0, replicas_wanted=1)
    operator = UserFactory(username="op")
    make_node(operator, name="late", capabilities={"cpu_cores": 4})
    (first,) = dispatch.schedule()
    dispatch.assignment_end(assignment_id=first, to=AssignmentState.EXPIRED, reason="lease ran out")
    assert services.payout_create(assignment_id=first) is None
    Assignment.objects.filter(id=first).update(state=AssignmentState.REJECTED)
    assert services.payout_create(assignment_id=first) is None
    assert not Payout.objects.exists()


def test_a_crash_between_broadcast_and_recording_pays_nobody_twice(w3: Web3, dep: Deployment) -> None:
    job, nodes = _accepted_job(tasks=2, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    escrow = chain.escrow(w3, signed=True)
    # What the settlement worker does before it dies: number the batch, mark it sending, broadcast it...
    batch = _number(job.id, services.MAX_BATCH)
    escrow.release(services.escrow_key(job.id), [ChainPayout(p.payout_index or 0, p.payee, p.amount) for p in batch])
    # ...and it is killed before recording anything. On restart:
    assert set(Payout.objects.values_list("state", flat=True)) == {PayoutState.SENDING}
    report = settle(w3, dep)
    assert report.recovered == 4
    assert report.settled == 0
    for persona in nodes:
        assert escrow.credit_of(Web3.to_checksum_address(persona.node.wallet_address)) == 2 * PRICE
    assert all(p.state == PayoutState.SETTLED and p.tx_hash.startswith("0x") for p in Payout.objects.all())
    assert services.reconcile(w3=w3, escrow=escrow, from_block=dep.block_number) == []


def test_a_crash_before_broadcast_sends_the_batch_again_with_the_same_indexes(w3: Web3, dep: Deployment) -> None:
    job, nodes = _accepted_job(tasks=1, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    indexes = sorted(p.payout_index for p in _number(job.id, services.MAX_BATCH))
    report = settle(w3, dep)
    assert report.settled == 2
    assert sorted(Payout.objects.values_list("payout_index", flat=True)) == indexes
    escrow = chain.escrow(w3)
    assert sum(escrow.credit_of(Web3.to_checksum_address(n.node.wallet_address)) for n in nodes) == 2 * PRICE


def test_a_finished_job_is_closed_after_settlement_and_its_refund_is_recorded(w3: Web3, dep: Deployment) -> None:
    job, _ = _accepted_job(tasks=1, replication=2)
    required = services.funding_required(job=job, fee_bps=FEE_BPS)
    poster = poster_funds(w3, dep, job, required + 5 * PRICE)
    sync(w3, dep)
    escrow = chain.escrow(w3, signed=True)
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED
    assert services.jobs_close(escrow=escrow) == []  # payouts still pending: not yet
    settle(w3, dep)
    assert services.jobs_close(escrow=escrow) == [job.id]
    assert services.jobs_close(escrow=escrow) == []
    JobEscrow(w3, dep.escrow, poster).refund(services.escrow_key(job.id))
    assert sync(w3, dep).refunds == 1
    refund = LedgerEntry.objects.get(job=job, kind=EntryKind.REFUND)
    assert refund.amount == 5 * PRICE
    assert escrow.job_of(services.escrow_key(job.id)).remaining == 0
    assert services.reconcile(w3=w3, escrow=escrow, job_id=job.id) == []


def test_reconcile_names_a_mismatch(w3: Web3, dep: Deployment) -> None:
    job, _ = _accepted_job(tasks=1, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    LedgerEntry.objects.create(
        kind=EntryKind.DEPOSIT, job=job, account="0x" + "0" * 40, amount=1, idempotency_key="forged"
    )
    mismatches = services.reconcile(w3=w3, escrow=chain.escrow(w3), job_id=job.id)
    assert [m.what for m in mismatches] == ["funded", "remaining"]
    assert "in the ledger but" in str(mismatches[0])


def test_a_chain_that_is_down_makes_settlement_wait_not_fail(w3: Web3, dep: Deployment, settings: Any) -> None:
    job, _ = _accepted_job(tasks=1, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    from marketplace.payments.tasks import CHAIN_UNAVAILABLE

    # The chain goes away after the worker connected: nothing listens on the discard port.
    down = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 5}))
    started = time.monotonic()
    with pytest.raises(CHAIN_UNAVAILABLE):
        services.payouts_settle(w3=down, escrow=JobEscrow(down, dep.escrow), from_block=dep.block_number)
    assert time.monotonic() - started < 30
    assert set(Payout.objects.values_list("state", flat=True)) == {PayoutState.PENDING}
    assert settle(w3, dep).settled == 2


def test_an_unreachable_chain_is_reported_as_unavailable_so_the_task_retries(settings: Any) -> None:
    from marketplace.payments.tasks import CHAIN_UNAVAILABLE

    settings.ETH_RPC_URL = "http://127.0.0.1:9"
    with pytest.raises(chain.ChainUnavailable) as raised:
        chain.web3()
    assert isinstance(raised.value, CHAIN_UNAVAILABLE)
    assert "does not answer" in str(raised.value)


def test_the_reconcile_command_exits_1_on_a_mismatch(w3: Web3, dep: Deployment, capsys: Any) -> None:
    job, _ = _accepted_job(tasks=1, replication=2)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    settle(w3, dep)
    call_command("payments", "reconcile")
    assert "The ledger matches the chain for every job and payee" in capsys.readouterr().out
    LedgerEntry.objects.create(kind=EntryKind.PAYOUT, job=job, account=dep.treasury, amount=7, idempotency_key="x")
    with pytest.raises(SystemExit) as exited:
        call_command("payments", "reconcile", "--job", str(job.id))
    assert exited.value.code == 1
    assert f"MISMATCH job {job.id}: released" in capsys.readouterr().out
    with pytest.raises(CommandError, match="--job 'nope' is not a job id"):
        call_command("payments", "reconcile", "--job", "nope")
