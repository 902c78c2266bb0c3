"""Attrition: throwaway nodes that take work and fail it, to fail the task and with it the poster's job; new nodes
that hoard work; an operator enrolling nodes by the hundred. Driven through the real API (real database and Redis:
an enrolment makes a real broker ACL user)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from marketplace.core import redis_admin
from marketplace.jobs import dispatch, verification
from marketplace.jobs.models import Assignment, Job, JobState, TaskState
from marketplace.nodes.models import Node
from nodeagent.signer import Wallet
from tests.adversarial.test_sybil_replication import benchmark_job, enrol, honest_checksum, operator_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _roomy_limits(settings: Any) -> None:
    # Each failure blocks its node from the job (the default blocks after two), so the next node gets the task.
    settings.HASHWORK = {**settings.HASHWORK, "JOB_NODE_MAX_FAILURES": 1, "ENROLMENTS_PER_HOUR": 10}


def test_five_throwaway_nodes_of_one_operator_failing_do_not_fail_the_task(caplog: pytest.LogCaptureFixture) -> None:
    mallory = operator_client("mallory")
    job = benchmark_job(replication=1)
    task = job.tasks.get()
    for i in range(5):
        throwaway = enrol(mallory, f"throwaway-{i}", f"198.51.{i}.10")
        (leased,) = dispatch.schedule()
        assert Assignment.objects.get(id=leased).node_id == throwaway.node_id
        with caplog.at_level(logging.INFO, logger="marketplace.jobs.dispatch"):
            throwaway.fail(str(leased))
        Node.objects.filter(id=throwaway.node_id).update(accepting=False)  # gone, as a throwaway node goes
    task.refresh_from_db()
    assert (task.state, task.live_replicas, task.lost_attempts) == (TaskState.RUNNING, 0, 5)
    assert Job.objects.get(id=job.id).state == JobState.RUNNING
    assert "nodes of 1 of the 3 distinct operators that fail it" in caplog.text
    # The honest path: an honest operator's node does the task and the job completes.
    honest = enrol(operator_client("olga"), "honest", "192.0.2.30")
    (leased,) = dispatch.schedule()
    honest.submit(str(leased), honest_checksum(task))
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert verification.job_complete_if_done(job_id=job.id)
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED


def test_failures_on_nodes_of_three_distinct_operators_fail_the_task_with_the_rule_named() -> None:
    job = benchmark_job(replication=1)
    task = job.tasks.get()
    for i, name in enumerate(["ann", "bob", "cem"]):
        rig = enrol(operator_client(name), f"rig-{name}", f"198.51.{i}.10")
        (leased,) = dispatch.schedule()
        assert Assignment.objects.get(id=leased).node_id == rig.node_id
        assert Job.objects.get(id=job.id).state == JobState.RUNNING, f"failed after {i} operators"
        rig.fail(str(leased), reason=f"{name}'s runner crashed")
    task.refresh_from_db()
    assert task.state == TaskState.FAILED
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert "on nodes of 3 distinct operators (TASK_FAIL_OPERATORS=3)" in job.state_reason
    assert "cem's runner crashed" in job.state_reason


def test_a_node_on_probation_works_on_one_assignment_at_a_time_until_its_first_accepted_result() -> None:
    job = benchmark_job(replication=1, tasks=4)
    newcomer = enrol(operator_client("nina"), "newcomer", "203.0.113.10", slots=4)
    (first,) = dispatch.schedule()
    # The harm did not happen: four free slots, four pending tasks, one lease.
    assert Assignment.objects.filter(node_id=newcomer.node_id).count() == 1
    assert dispatch.schedule() == []
    # Done work frees its place (a verdict may wait on another node's replica): the next one, still one at a time.
    task = Assignment.objects.get(id=first).task
    newcomer.submit(str(first), honest_checksum(task))
    (second,) = dispatch.schedule()
    assert dispatch.schedule() == []
    # The honest path: once a result is accepted, the node is trusted with all its slots.
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert Node.objects.get(id=newcomer.node_id).valid_count == 1
    assert len(dispatch.schedule()) == 2
    assert job.tasks.filter(state=TaskState.RUNNING).count() == 3
    assert Assignment.objects.get(id=second).node_id == newcomer.node_id


def _acl_users() -> set[str]:
    return {u.decode() if isinstance(u, bytes) else u for u in redis_admin.admin_client().acl_users()}


def test_enrolment_beyond_the_hourly_limit_answers_429_and_creates_nothing(settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "ENROLMENTS_PER_HOUR": 2}
    mallory = operator_client("mallory")
    first, _second = (enrol(mallory, f"rig-{i}", "203.0.113.10") for i in range(2))
    nodes, users = Node.objects.count(), _acl_users()
    body = {"name": "rig-3", "wallet_address": Wallet.create().address}
    refused = mallory.post("/api/nodes/enroll/", body, format="json", REMOTE_ADDR="203.0.113.10")
    assert refused.status_code == 429
    message = refused.json()["message"]
    assert "at most 2 nodes per operator per hour" in message
    assert "Try again in" in message
    assert refused.json()["extra"]["limit"] == 2
    wait = refused.json()["extra"]["retry_after_seconds"]
    assert 3500 < wait <= 3600
    assert refused["Retry-After"] == str(wait)
    assert (Node.objects.count(), _acl_users()) == (nodes, users)
    assert not Node.objects.filter(name="rig-3").exists()
    # Removing a node does not give its place back.
    Node.objects.filter(id=first.node_id).update(is_active=False)
    again = mallory.post("/api/nodes/enroll/", body, format="json", REMOTE_ADDR="203.0.113.10")
    assert again.status_code == 429
    # The honest path: another operator enrols, and Mallory may again once the hour has passed.
    assert operator_client("olga").post("/api/nodes/enroll/", body, format="json").status_code == 201
    Node.objects.filter(operator__username="mallory").update(created_at=timezone.now() - timedelta(hours=1))
    assert mallory.post("/api/nodes/enroll/", body, format="json").status_code == 201
