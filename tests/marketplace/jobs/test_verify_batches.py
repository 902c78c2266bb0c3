"""Verifications in batches (jobs.verify_batches): results of many tasks cost one drain message, the drain verifies
them all, and what a drain took but did not finish is verified by the work sweep. Real Redis and PostgreSQL."""

from __future__ import annotations

import pytest
from django.utils import timezone

from marketplace.core.queues import Queue, TaskName
from marketplace.core.redis_admin import admin_client, forget, prefixed
from marketplace.jobs import dispatch, verify_batches
from marketplace.jobs.models import Job, JobState, Task, TaskState
from marketplace.jobs.services import sweep
from marketplace.nodes.models import Node
from tests.adversarial.test_sybil_replication import benchmark_job, enrol, honest_checksum, operator_client
from tests.faults.test_lost_work import LATER, lose, queued

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty() -> None:
    admin_client().delete(prefixed(verify_batches.PENDING_KEY))
    forget(verify_batches.DRAIN_REQUESTED_KEY)
    lose(Queue.VERIFY)


def _submitted(tasks: int) -> Job:
    """A replication-2 benchmark job whose every replica is submitted by two honest nodes of two operators."""
    rigs = [
        enrol(operator_client("alice"), "rig-a", "203.0.113.10", slots=tasks),
        enrol(operator_client("bob"), "rig-b", "198.51.100.20", slots=tasks),
    ]
    # Past probation (an accepted result each), so each may hold all its slots.
    Node.objects.filter(id__in=[r.node_id for r in rigs]).update(valid_count=1)
    job = benchmark_job(replication=2, tasks=tasks)
    assert len(dispatch.schedule()) == 2 * tasks
    for rig in rigs:
        for assignment_id in rig.leased():
            task = Task.objects.get(assignments__id=assignment_id)
            rig.submit(assignment_id, honest_checksum(task))
    return job


def test_results_of_many_tasks_wait_in_one_set_and_one_drain_verifies_them_all() -> None:
    job = _submitted(tasks=4)
    assert verify_batches.pending() == 4  # each task once, though each had two results
    drains = [name for name, _ in queued(Queue.VERIFY)]
    assert drains == [TaskName.VERIFY_DRAIN.value]  # eight results, one message; no per-result verify
    assert verify_batches.verify_drain() == 4
    assert verify_batches.pending() == 0
    assert set(Task.objects.filter(job=job).values_list("state", flat=True)) == {TaskState.COMPLETED}
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED


def test_a_task_a_drain_took_and_lost_is_verified_by_the_work_sweep() -> None:
    job = _submitted(tasks=2)
    # A drain's worker took the ids and was killed before verifying them: the set is empty, nothing is queued.
    assert len(admin_client().spop(prefixed(verify_batches.PENDING_KEY), 10)) == 2
    lose(Queue.VERIFY)
    assert sweep.work_sweep()["verify"] == 0  # within the grace period the results may just be waiting
    assert sweep.work_sweep(now=timezone.now() + LATER)["verify"] == 2
    assert sorted(name for name, _ in queued(Queue.VERIFY)) == [TaskName.TASK_VERIFY.value] * 2
    assert Job.objects.get(id=job.id).state == JobState.RUNNING  # verified only when a worker runs them
