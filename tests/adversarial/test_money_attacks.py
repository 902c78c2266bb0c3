"""Attacks on the money, played on a real Anvil with the escrow deployed, the real database and the real API:
a refused release that used to stall everyone's settlement, refunding before the work is paid, front-running a
poster's escrow id, downloading work and cancelling before it is paid, and a surplus replica paid after its
job's escrow closed. Each shows the harm does not happen and that the honest path still pays."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient
from web3 import Web3

from contracts.bindings import ComputeToken, JobEscrow
from contracts.deploy import Deployment
from contracts.errors import EscrowJobIdNotPoster
from marketplace.jobs import dispatch, verification
from marketplace.jobs import services as job_services
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Result, TaskState
from marketplace.payments import chain, services
from marketplace.payments.models import Deposit, JobSettlement, LedgerEntry, Payout, PayoutState
from tests.adversarial.test_sybil_replication import (
    SPEC,
    Rig,
    benchmark_job,
    enrol,
    honest_checksum,
    operator_client,
    prove,
)
from tests.chain_fixtures import (
    FEE_BPS,
    anvil,
    bind_directly,
    dep,
    dev_account,
    fund_raw,
    poster_funds,
    settle,
    sync,
    w3,
)
from tests.factories import AssignmentFactory, JobFactory, TaskFactory, UserFactory

__all__ = ["anvil", "dep", "w3"]  # fixtures
pytestmark = pytest.mark.django_db


def _draft_job() -> Job:
    return job_services.job_create(
        poster=UserFactory(username="poster"), kind="benchmark", spec=SPEC, price_per_replica=10, replication=1
    )


_RIGS: dict[str, Rig] = {}


def _rigs(n: int, tag: str = "", *, slots: int = 1) -> list[Rig]:
    """`n` honest-looking nodes of distinct operators on distinct networks, past probation."""
    rigs = [
        enrol(operator_client(f"op{tag}{i}"), f"rig{tag}{i}", f"198.51.{100 + i}.{7 + len(tag)}", slots=slots)
        for i in range(n)
    ]
    prove(*rigs)
    _RIGS.update({str(r.node_id): r for r in rigs})
    return rigs


def _lease_all(rigs: list[Rig]) -> dict[str, str]:
    """Schedule, and return {assignment id: node id} for what each rig was leased."""
    dispatch.schedule()
    return {str(a.id): str(a.node_id) for a in Assignment.objects.filter(state=AssignmentState.LEASED)}


def _rig_of(node_id: str) -> Rig:
    return _RIGS[node_id]


def _run_job(w3: Web3, dep: Deployment, *, replication: int, who: int = 1) -> tuple[Job, list[Rig]]:
    """A funded benchmark job whose one task every rig runs and submits honestly, verified."""
    job = benchmark_job(replication=replication, poster=f"poster{who}")
    rigs = _rigs(replication, tag=str(who))
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS), who=who)
    sync(w3, dep)
    task = job.tasks.get()
    for assignment_id, node_id in _lease_all(rigs).items():
        rig = _rig_of(node_id)
        assert rig.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
        assert rig.upload(assignment_id, honest_checksum(task)).status_code == 201
    verification.task_verify(task_id=task.id)
    verification.job_complete_if_done(job_id=job.id)
    return Job.objects.get(id=job.id), rigs


# 1. One refused release stalls settlement for everyone ---------------------------------------------------------


def test_a_refused_release_is_recorded_on_its_job_and_never_delays_another_jobs_payouts(
    w3: Web3, dep: Deployment, capsys: Any
) -> None:
    stalled, _ = _run_job(w3, dep, replication=1, who=1)
    honest, _ = _run_job(w3, dep, replication=1, who=2)
    assert Payout.objects.filter(state=PayoutState.PENDING).count() == 2
    # Whatever makes the escrow refuse (here: the job was closed under the marketplace), the release reverts.
    chain.escrow(w3, signed=True).close(services.escrow_key(stalled.id))

    report = settle(w3, dep)
    assert report.refused == [stalled.id]
    assert report.settled == 1
    paid = Payout.objects.get(job=honest)
    assert paid.state == PayoutState.SETTLED
    assert chain.escrow(w3).credit_of(paid.payee) == 10  # the honest job was paid in the same run
    refused = JobSettlement.objects.get(job=stalled)
    assert refused.refused_step == "release"
    assert refused.refusals == 1
    assert "EscrowJobClosed" in refused.last_error
    assert refused.retry_at is not None
    assert refused.retry_at > timezone.now()
    assert Payout.objects.get(job=stalled).state == PayoutState.PENDING  # not lost, not half-sent
    # Backoff: the next run leaves the job alone; after the delay it is tried again (and refused again).
    assert settle(w3, dep).refused == []
    later = refused.retry_at + timedelta(seconds=1)
    again = services.payouts_settle(w3=w3, escrow=chain.escrow(w3, signed=True), from_block=dep.block_number, now=later)
    assert again.refused == [stalled.id]
    refused.refresh_from_db()
    assert refused.refusals == 2
    assert refused.retry_at - later == services.settlement_retry_delay(2)
    # Visible to the poster (API) and the operator (reconcile).
    poster = APIClient()
    poster.force_authenticate(stalled.poster)
    shown = poster.get(f"/api/jobs/{stalled.id}/escrow/").json()
    assert shown["settlement"]["refused_step"] == "release"
    assert "EscrowJobClosed" in shown["settlement"]["last_error"]
    with pytest.raises(SystemExit) as exited:
        call_command("payments", "reconcile")
    assert exited.value.code == 1
    assert f"REFUSED job {stalled.id}: release refused 2 time(s)" in capsys.readouterr().out


def test_a_job_is_closed_only_when_none_of_its_replicas_is_live_and_a_refused_close_is_isolated(
    w3: Web3, dep: Deployment
) -> None:
    job, _ = _run_job(w3, dep, replication=1)
    settle(w3, dep)
    escrow = chain.escrow(w3, signed=True)
    # A replica of the finished job still submitted and unjudged (it may yet be owed a payout): not closed.
    assignment = Assignment.objects.get(task__job=job)
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.SUBMITTED)
    assert services.jobs_close(escrow=escrow) == []
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.ACCEPTED)
    assert services.jobs_close(escrow=escrow) == [job.id]
    assert escrow.job_of(services.escrow_key(job.id)).closed
    assert JobSettlement.objects.get(job=job).closed_at is not None
    assert services.jobs_close(escrow=escrow) == []  # recorded: the chain is not asked again


# 2. Refund before payment ----------------------------------------------------------------------------------------


def test_a_deposit_whose_deadline_leaves_no_settlement_margin_does_not_start_the_job(w3: Web3, dep: Deployment) -> None:
    job = _draft_job()
    required = services.funding_required(job=job, fee_bps=FEE_BPS)
    soon = w3.eth.get_block("latest")["timestamp"] + 120  # the attack: refund right after the work is done
    poster_funds(w3, dep, job, required, deadline=soon)
    report = sync(w3, dep)
    job.refresh_from_db()
    assert report.refused_jobs == [job.id]
    assert job.state == JobState.DRAFT  # no node works for a deposit the poster can take back before paying
    assert "leaves no settlement margin" in job.state_reason
    assert "Top it up (any amount) with that deadline" in job.state_reason
    # The honest path: a top-up that moves the deadline past the margin starts it.
    poster_funds(w3, dep, job, 1)
    assert sync(w3, dep).funded_jobs == [job.id]
    assert Job.objects.get(id=job.id).state in (JobState.FUNDED, JobState.RUNNING)


def test_a_deposit_with_other_terms_than_the_jobs_does_not_start_it(w3: Web3, dep: Deployment) -> None:
    job = _draft_job()
    services.escrow_bind(job_id=job.id, wallet=dev_account(w3).address)
    required = services.funding_required(job=job, fee_bps=FEE_BPS)
    fund_raw(
        w3,
        dep,
        services.escrow_key(job.id),
        required,
        who=1,
        deadline=services.escrow_deadline_min(job),
        max_payouts=1,
        max_payout=job.price_per_replica + 1,  # more per payout than the job pays
    )
    sync(w3, dep)
    job.refresh_from_db()
    assert job.state == JobState.DRAFT
    assert "terms" in job.state_reason
    assert "post the job again" in job.state_reason


# 3. Front-running a job id ---------------------------------------------------------------------------------------


def test_nobody_but_the_bound_wallet_can_fund_a_jobs_escrow_id_first(w3: Web3, dep: Deployment) -> None:
    job = _draft_job()
    poster = APIClient()
    poster.force_authenticate(job.poster)
    bound = poster.post(f"/api/jobs/{job.id}/escrow/", {"wallet": dev_account(w3, 1).address}, format="json")
    assert bound.status_code == 200, bound.json()
    escrow_id = bound.json()["escrow_id"]
    assert escrow_id.lower().startswith(dev_account(w3, 1).address.lower())
    # The attacker sees the id and funds 1 base unit first, from its own wallet: the chain refuses.
    attacker = dev_account(w3, 3)
    ComputeToken(w3, dep.token, dev_account(w3, 0)).mint(attacker.address, 10)
    ComputeToken(w3, dep.token, attacker).approve(dep.escrow, 10)
    with pytest.raises(EscrowJobIdNotPoster):
        JobEscrow(w3, dep.escrow, attacker).fund(
            bytes.fromhex(escrow_id[2:]), 1, services.escrow_deadline_min(job), max_payouts=1, max_payout=1
        )
    # Funding the job's salt under its own address is a different id the marketplace never counts.
    squat = bytes.fromhex(attacker.address[2:]) + job.id.bytes[:12]
    JobEscrow(w3, dep.escrow, attacker).fund(squat, 1, services.escrow_deadline_min(job), max_payouts=1, max_payout=1)
    assert sync(w3, dep).ignored
    assert not Deposit.objects.exists()
    assert not LedgerEntry.objects.exists()
    # The poster funds its own id and the job starts.
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    assert sync(w3, dep).funded_jobs == [job.id]
    # Once deposited, the id is fixed: the poster cannot be made to fund somewhere else.
    moved = poster.post(f"/api/jobs/{job.id}/escrow/", {"wallet": attacker.address}, format="json")
    assert moved.status_code == 409
    assert JobSettlement.objects.get(job=job).escrow_id == escrow_id
    bad = poster.post(f"/api/jobs/{job.id}/escrow/", {"wallet": "0x1234"}, format="json")
    assert bad.status_code == 400
    assert "wallet" in bad.json()["extra"]["fields"]


# 4. Download, then cancel ----------------------------------------------------------------------------------------


def test_a_poster_cannot_download_unverified_work_and_cancelling_still_pays_what_verifies(
    w3: Web3, dep: Deployment
) -> None:
    job = benchmark_job(replication=2, tasks=2)
    rigs = _rigs(2, slots=2)
    bind_job = Job.objects.get(id=job.id)
    poster_funds(w3, dep, bind_job, services.funding_required(job=bind_job, fee_bps=FEE_BPS))
    sync(w3, dep)
    tasks = list(job.tasks.order_by("index"))
    leased = _lease_all(rigs)
    # Task 0: both replicas submitted (verifiable). Task 1: only one (nothing to compare it with).
    for assignment_id, node_id in leased.items():
        assignment = Assignment.objects.get(id=assignment_id)
        rig = _rig_of(node_id)
        if assignment.task.index == 1 and rig is rigs[1]:
            continue
        assert rig.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
        assert rig.upload(assignment_id, honest_checksum(assignment.task)).status_code == 201
    poster = APIClient()
    poster.force_authenticate(job.poster)
    results = poster.get(f"/api/jobs/{job.id}/results/").json()["results"]
    assert results
    assert all(r["artifact_url"] is None for r in results)
    for result in Result.objects.filter(assignment__task__job=job):
        assert poster.get(f"/api/results/{result.id}/artifact/").status_code == 404  # the attack: take it
    assert poster.post(f"/api/jobs/{job.id}/cancel/").status_code == 200
    for task in tasks:
        verification.task_verify(task_id=task.id)
    states = {
        (a.task.index, str(a.node_id)): a.state for a in Assignment.objects.filter(task__job=job).select_related("task")
    }
    assert [states[(0, str(r.node_id))] for r in rigs] == [AssignmentState.ACCEPTED] * 2
    assert states[(1, str(rigs[0].node_id))] == AssignmentState.CANCELLED  # unverifiable: unpaid, no mark
    assert states[(1, str(rigs[1].node_id))] == AssignmentState.CANCELLED  # revoked before it ran
    assert Payout.objects.filter(job=job).count() == 2
    settle(w3, dep)
    escrow = chain.escrow(w3, signed=True)
    assert services.jobs_close(escrow=escrow) == [job.id]
    on_chain = escrow.job_of(services.escrow_key(job.id))
    assert on_chain.released == 2 * (10 + 10 * FEE_BPS // 10_000)
    assert on_chain.remaining == services.funding_required(job=bind_job, fee_bps=FEE_BPS) - on_chain.released
    # Now verified, the accepted replicas' artifacts are the poster's.
    accepted = Result.objects.filter(assignment__task__job=job, assignment__state=AssignmentState.ACCEPTED)
    assert all(poster.get(f"/api/results/{r.id}/artifact/").status_code == 200 for r in accepted)


# 1b. A surplus replica after completion ------------------------------------------------------------------------


def test_a_surplus_replica_is_stopped_when_its_task_completes_and_its_late_result_is_refused(
    w3: Web3, dep: Deployment
) -> None:
    job = benchmark_job(replication=3)
    rigs = _rigs(3)
    task = job.tasks.get()
    leased = _lease_all(rigs)
    assert len(leased) == 3
    ids = list(leased)
    for assignment_id in ids:
        rig = _rig_of(leased[assignment_id])
        assert rig.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
    for assignment_id in ids[:2]:  # the quorum of 2 agrees while the third still runs
        assert _rig_of(leased[assignment_id]).upload(assignment_id, honest_checksum(task)).status_code == 201
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    straggler = Assignment.objects.get(id=ids[2])
    assert straggler.state == AssignmentState.CANCELLED
    late = _rig_of(leased[ids[2]]).upload(ids[2], honest_checksum(task))
    assert late.status_code == 409
    assert "not paid" in late.json()["message"] or "cancelled" in late.json()["message"]
    assert not Result.objects.filter(assignment_id=ids[2]).exists()
    assert Payout.objects.filter(job=job).count() == 2
    assert not Payout.objects.filter(assignment_id=ids[2]).exists()
    # A replica that slipped in as SUBMITTED before the cancel is cancelled by verification, not paid.
    Assignment.objects.filter(id=ids[2]).update(state=AssignmentState.SUBMITTED)
    result = Result(assignment_id=ids[2], sha256="0" * 64, size=2, signature="0x" + "1" * 130)
    result.artifact.save("late.json", ContentFile(json.dumps({"checksum": honest_checksum(task)}).encode()))
    verification.task_verify(task_id=task.id)
    assert Assignment.objects.get(id=ids[2]).state == AssignmentState.CANCELLED
    assert not Payout.objects.filter(assignment_id=ids[2]).exists()


def test_a_stopped_train_jobs_unjudged_updates_are_cancelled_unpaid_so_its_escrow_can_close(
    w3: Web3, dep: Deployment
) -> None:
    """A round that will never close (its job was cancelled) must not keep the escrow open for ever: its
    submitted updates are cancelled, unpaid and with no mark against their nodes; then the escrow closes."""
    job = JobFactory(kind="train", state=JobState.RUNNING, task_count=1, replication=1, price_per_replica=10)
    bind_directly(job, dev_account(w3).address)
    poster_funds(w3, dep, job, services.funding_required(job=job, fee_bps=FEE_BPS))
    sync(w3, dep)
    update = AssignmentFactory(task=TaskFactory(job=job, index=0), state=AssignmentState.SUBMITTED)
    Job.objects.filter(id=job.id).update(state=JobState.CANCELLED)
    escrow = chain.escrow(w3, signed=True)
    # The settlement run gives the update its verdict first, then closes the escrow it no longer holds open.
    assert services.jobs_close(escrow=escrow) == [job.id]
    update.refresh_from_db()
    assert update.state == AssignmentState.CANCELLED
    assert "not paid" in update.state_reason
    assert not Payout.objects.filter(job=job).exists()
    assert update.node.invalid_count == 0
    assert escrow.job_of(services.escrow_key(job.id)).closed
