"""Leasing, lease expiry, hand-back, the per-job block list and replica verification, on the real database."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection
from django.utils import timezone

from marketplace.jobs import dispatch, kinds, verification
from marketplace.jobs.kinds import SpotCheckedKind
from marketplace.jobs.kinds.benchmark import BenchmarkKind
from marketplace.jobs.models import (
    Assignment,
    AssignmentState,
    Job,
    JobNodeBlock,
    JobState,
    Result,
    Task,
    TaskState,
)
from marketplace.nodes.models import Node, NodeReputation
from tests.conftest import make_node
from tests.factories import JobFactory, TaskFactory, UserFactory

CHECKSUM_A = "a" * 64
CHECKSUM_B = "b" * 64


def _job(tasks: int = 3, replication: int = 2, **kwargs: Any) -> Job:
    job = JobFactory(state=JobState.RUNNING, replication=replication, task_count=tasks, **kwargs)
    for i in range(tasks):
        TaskFactory(job=job, index=i, replicas_wanted=replication, requirements={"cpu_cores": 1, "ram_mb": 100})
    return job


def _nodes(count: int, *, proven: bool = False, **kwargs: Any) -> list[Node]:
    """`count` nodes, each of its own operator (replicas of a task go to distinct operators); `proven` nodes have
    an accepted result already, so they are past probation and may fill all their slots."""
    defaults = {"capabilities": {"cpu_cores": 4, "ram_mb": 8000}, "slots": 4, "valid_count": 1 if proven else 0}
    return [
        make_node(UserFactory(username=f"op{i}"), name=f"n{i}", **{**defaults, **kwargs}).node for i in range(count)
    ]


def _submit(assignment: Assignment, checksum: str) -> None:
    """What an accepted upload does, without HTTP: the replica is submitted with the runner's JSON."""
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    assert dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.SUBMITTED)
    result = Result(assignment=assignment, sha256="0" * 64, size=10, signature="0x" + "1" * 130)
    result.artifact.save("a.json", ContentFile(json.dumps({"checksum": checksum}).encode()), save=False)
    result.save()


@pytest.mark.django_db
class TestLeasing:
    def test_each_task_gets_its_replicas_on_different_nodes(self) -> None:
        job = _job(tasks=3, replication=2)
        nodes = _nodes(2, proven=True)
        assert len(dispatch.schedule()) == 6
        for task in job.tasks.all():
            assert sorted(a.node_id for a in task.assignments.all()) == sorted(n.id for n in nodes)
            assert Task.objects.get(id=task.id).live_replicas == 2
        # Everything wanted is leased: another run leases nothing.
        assert dispatch.schedule() == []

    def test_the_message_asks_for_as_many_gpus_as_the_task_and_none_for_a_malformed_count(self) -> None:
        job = _job(tasks=3, replication=1)
        for task, gpus in zip(job.tasks.order_by("index"), [2, "2", True], strict=True):
            task.requirements = {"cpu_cores": 1, "gpus": gpus}
            task.save(update_fields=["requirements"])
        for task, wanted in zip(job.tasks.order_by("index"), [2, 0, 0], strict=True):
            now = timezone.now()
            leased = Assignment(task=task, start_by=now, lease_expires_at=now)
            message = dispatch.assignment_message(assignment=leased, task=task, job=job)
            assert message["gpus"] == wanted

    def test_a_node_gets_no_more_work_than_it_has_slots(self) -> None:
        _job(tasks=5, replication=1)
        (node,) = _nodes(1, slots=2, proven=True)
        assert len(dispatch.schedule()) == 2
        assert Node.objects.get(id=node.id).busy_slots == 2
        assert Assignment.objects.filter(node=node).count() == 2

    def test_one_node_cannot_hold_two_replicas_of_a_task(self) -> None:
        job = _job(tasks=1, replication=2)
        _nodes(1)
        assert len(dispatch.schedule()) == 1
        assert job.tasks.get().live_replicas == 1

    @pytest.mark.parametrize(
        ("node_changes", "why"),
        [
            ({"capabilities": {"cpu_cores": 4, "ram_mb": 50}}, "too little RAM"),
            ({"min_price": {"benchmark": str(10**19)}}, "asks more than the job pays"),
            ({"last_heartbeat": timezone.now() - timedelta(hours=1)}, "offline"),
            ({"accepting": False}, "paused"),
            ({"is_active": False}, "banned"),
        ],
    )
    def test_unsuitable_nodes_get_nothing(self, node_changes: dict[str, Any], why: str) -> None:
        _job(tasks=1, replication=1)
        (node,) = _nodes(1)
        Node.objects.filter(id=node.id).update(**node_changes)
        assert dispatch.schedule() == [], why

    def test_gpu_work_goes_only_to_nodes_with_enough_gpus(self) -> None:
        job = _job(tasks=1, replication=1)
        job.tasks.update(requirements={"gpus": 1, "min_vram_mb": 8000})
        small, big = _nodes(2)
        Node.objects.filter(id=small.id).update(capabilities={"gpus": [{"vram_mb": 4000}], "cpu_cores": 4})
        Node.objects.filter(id=big.id).update(capabilities={"gpus": [{"vram_mb": 24000}], "cpu_cores": 4})
        (leased,) = dispatch.schedule()
        assert Assignment.objects.get(id=leased).node_id == big.id

    def test_proven_nodes_are_preferred(self) -> None:
        _job(tasks=1, replication=1)
        _fresh, proven = _nodes(2)
        Node.objects.filter(id=proven.id).update(consecutive_valid=20, valid_count=20)
        (leased,) = dispatch.schedule()
        assert Assignment.objects.get(id=leased).node_id == proven.id

    def test_reputation_on_the_jobs_kind_comes_before_a_long_run_of_results(self) -> None:
        job = _job(tasks=1, replication=1)
        streak, reputable = _nodes(2, proven=True)
        Node.objects.filter(id=streak.id).update(consecutive_valid=50, valid_count=50)
        NodeReputation.objects.create(node=reputable, kind=job.kind, score=3)
        NodeReputation.objects.create(node=streak, kind="render", score=40)  # earned on another kind: no help here
        (leased,) = dispatch.schedule()
        assert Assignment.objects.get(id=leased).node_id == reputable.id

    def test_work_of_a_job_that_is_not_running_is_not_leased(self) -> None:
        job = _job(tasks=2, replication=1)
        Job.objects.filter(id=job.id).update(state=JobState.CANCELLED)
        _nodes(1)
        assert dispatch.schedule() == []


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_never_over_lease() -> None:
    # On PostgreSQL the four schedulers really interleave; SQLite serialises their writes (busy timeout),
    # which must come out just as right.
    job = _job(tasks=30, replication=2)
    nodes = _nodes(4, slots=8, proven=True)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            dispatch.schedule()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for task in Task.objects.filter(job=job):
        assert task.assignments.count() <= 2
        assert task.assignments.count() == task.live_replicas
    for node in Node.objects.filter(id__in=[n.id for n in nodes]):
        assert node.assignments.count() <= node.slots
        assert node.assignments.count() == node.busy_slots
    assert Assignment.objects.filter(task__job=job).count() == 32  # 4 nodes × 8 slots


@pytest.mark.django_db
class TestLeases:
    def test_a_lease_not_started_in_its_window_expires_and_is_re_leased_elsewhere(self) -> None:
        job = _job(tasks=1, replication=1)
        slow, other = _nodes(2)
        Node.objects.filter(id=other.id).update(accepting=False)
        (first,) = dispatch.schedule()
        assert Assignment.objects.get(id=first).node_id == slow.id
        Assignment.objects.filter(id=first).update(start_by=timezone.now() - timedelta(seconds=1))
        assert dispatch.assignments_expire() == 1
        expired = Assignment.objects.get(id=first)
        assert expired.state == AssignmentState.EXPIRED
        assert Node.objects.get(id=slow.id).busy_slots == 0
        assert Node.objects.get(id=slow.id).expired_count == 1
        Node.objects.filter(id=other.id).update(accepting=True)
        (second,) = dispatch.schedule()
        assert Assignment.objects.get(id=second).node_id == other.id
        assert Assignment.objects.get(id=second).attempt == 2
        assert job.tasks.get().live_replicas == 1

    def test_a_node_whose_replica_expired_may_take_the_task_again_but_never_holds_two_that_count(self) -> None:
        # Two operators only (the fault suite's market after a web outage): without this the task waits forever
        # for a third operator, because its first replica's expiry left its node unable to take it again.
        job = _job(tasks=1, replication=2)
        a, _ = _nodes(2)
        first = dispatch.schedule()
        assert len(first) == 2
        lost = Assignment.objects.get(id__in=first, node=a)
        Assignment.objects.filter(id=lost.id).update(start_by=timezone.now() - timedelta(seconds=1))
        assert dispatch.assignments_expire() == 1
        (again,) = dispatch.schedule()
        retaken = Assignment.objects.get(id=again)
        assert retaken.node_id == a.id
        assert retaken.attempt == 3
        assert dispatch.schedule() == []  # a live replica each: neither node gets a second one
        assert Assignment.objects.filter(task__job=job, node=a).exclude(state=AssignmentState.EXPIRED).count() == 1
        with pytest.raises(IntegrityError):
            Assignment.objects.create(
                task=retaken.task, node=a, attempt=4, start_by=timezone.now(), lease_expires_at=timezone.now()
            )

    def test_a_running_lease_expires_unless_heartbeats_extend_it(self) -> None:
        _job(tasks=2, replication=1)
        (node,) = _nodes(1, proven=True)
        a, b = dispatch.schedule()
        Assignment.objects.filter(id__in=[a, b]).update(state=AssignmentState.RUNNING)
        past = timezone.now() - timedelta(seconds=1)
        Assignment.objects.filter(id__in=[a, b]).update(lease_expires_at=past)
        assert dispatch.leases_extend(node=node, assignment_ids=[a]) == []
        assert dispatch.assignments_expire() == 1
        assert Assignment.objects.get(id=a).state == AssignmentState.RUNNING
        assert Assignment.objects.get(id=b).state == AssignmentState.EXPIRED

    def test_a_heartbeat_names_the_assignments_the_node_no_longer_holds(self) -> None:
        job = _job(tasks=1, replication=1)
        (node,) = _nodes(1)
        (a,) = dispatch.schedule()
        Assignment.objects.filter(id=a).update(state=AssignmentState.RUNNING)
        dispatch.work_stop(job_id=job.id, reason="cancelled")
        assert dispatch.leases_extend(node=node, assignment_ids=[a]) == [a]

    def test_a_task_fails_with_a_reason_once_nodes_of_three_operators_lost_it(self) -> None:
        job = _job(tasks=1, replication=1)
        nodes = _nodes(3, slots=1)
        for round_ in range(3):
            # JOB_NODE_MAX_FAILURES is 2: each node's first loss does not block it, so stop it taking the task again.
            Node.objects.exclude(id=nodes[round_].id).update(accepting=False)
            Node.objects.filter(id=nodes[round_].id).update(accepting=True)
            (assignment_id,) = dispatch.schedule()
            assert Assignment.objects.get(id=assignment_id).node_id == nodes[round_].id
            assert job.tasks.get().state == TaskState.RUNNING, f"failed after {round_} operators"
            Assignment.objects.filter(id=assignment_id).update(start_by=timezone.now() - timedelta(seconds=1))
            assert dispatch.assignments_expire() == 1
        job.refresh_from_db()
        assert job.state == JobState.FAILED
        assert "attempts expired or failed, on nodes of 3 distinct operators" in job.state_reason
        assert Task.objects.filter(job=job, state=TaskState.FAILED).exists()
        assert not Assignment.objects.filter(task__job=job, state__in=[AssignmentState.LEASED]).exists()

    def test_a_node_that_keeps_failing_a_job_is_blocked_from_it(self) -> None:
        job = _job(tasks=4, replication=1)
        flaky, steady = _nodes(2, slots=1)
        Node.objects.filter(id=steady.id).update(accepting=False)
        for _ in range(2):
            (a,) = dispatch.schedule()
            assert Assignment.objects.get(id=a).node_id == flaky.id
            assert dispatch.assignment_end(assignment_id=a, to=AssignmentState.FAILED, reason="runner crashed")
        assert JobNodeBlock.objects.get(job=job, node=flaky).blocked
        assert dispatch.schedule() == []
        other_job = _job(tasks=1, replication=1)
        (a,) = dispatch.schedule()
        assert Assignment.objects.get(id=a).task.job_id == other_job.id

    def test_handed_back_work_is_re_leased_at_once_without_a_mark_against_the_node(self) -> None:
        job = _job(tasks=1, replication=1)
        leaving, staying = _nodes(2)
        Node.objects.filter(id=staying.id).update(accepting=False)
        (a,) = dispatch.schedule()
        Assignment.objects.filter(id=a).update(state=AssignmentState.RUNNING)
        assert dispatch.node_release(node=leaving, accepting=False) == 1
        assert Assignment.objects.get(id=a).state == AssignmentState.RELEASED
        left = Node.objects.get(id=leaving.id)
        assert (left.expired_count, left.busy_slots, left.accepting) == (0, 0, False)
        assert job.tasks.get().lost_attempts == 0
        Node.objects.filter(id=staying.id).update(accepting=True)
        (b,) = dispatch.schedule()
        assert Assignment.objects.get(id=b).node_id == staying.id


@pytest.mark.django_db
class TestVerification:
    def _leased(self, replication: int = 2, nodes: int = 3) -> tuple[Task, list[Assignment], list[Node]]:
        job = _job(tasks=1, replication=replication)
        all_nodes = _nodes(nodes)
        for node in all_nodes[replication:]:
            Node.objects.filter(id=node.id).update(accepting=False)
        dispatch.schedule()
        task = job.tasks.get()
        return task, list(task.assignments.order_by("node__name")), all_nodes

    def test_agreeing_replicas_are_accepted_and_the_job_completes(self) -> None:
        task, (a, b), _ = self._leased()
        _submit(a, CHECKSUM_A)
        assert verification.task_verify(task_id=task.id) == TaskState.RUNNING
        _submit(b, CHECKSUM_A)
        assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
        assert {x.state for x in Assignment.objects.filter(task=task)} == {AssignmentState.ACCEPTED}
        assert verification.job_complete_if_done(job_id=task.job_id)
        assert Job.objects.get(id=task.job_id).state == JobState.COMPLETED
        assert Node.objects.get(id=a.node_id).consecutive_valid == 1

    def test_a_disagreement_asks_a_third_node_and_the_odd_one_out_is_rejected(self) -> None:
        task, (honest, liar), nodes = self._leased()
        _submit(honest, CHECKSUM_A)
        _submit(liar, CHECKSUM_B)
        verification.task_verify(task_id=task.id)
        task.refresh_from_db()
        assert task.state == TaskState.RUNNING
        assert task.replicas_wanted == 3
        Node.objects.filter(id=nodes[2].id).update(accepting=True)
        (third_id,) = dispatch.schedule()
        third = Assignment.objects.get(id=third_id)
        assert third.node_id == nodes[2].id
        _submit(third, CHECKSUM_A)
        assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
        assert Assignment.objects.get(id=liar.id).state == AssignmentState.REJECTED
        assert Assignment.objects.get(id=honest.id).state == AssignmentState.ACCEPTED
        assert Assignment.objects.get(id=third.id).state == AssignmentState.ACCEPTED
        lying = Node.objects.get(id=liar.node_id)
        assert (lying.invalid_count, lying.consecutive_valid) == (1, 0)
        # A wrong result: no more of this job for the liar.
        assert JobNodeBlock.objects.get(job_id=task.job_id, node_id=liar.node_id).blocked
        assert not JobNodeBlock.objects.filter(node_id__in=[honest.node_id, third.node_id]).exists()

    def test_a_malformed_result_is_rejected_and_its_replica_leased_again(self) -> None:
        task, (a, _b), nodes = self._leased()
        Assignment.objects.filter(id=a.id).update(state=AssignmentState.RUNNING)
        dispatch.assignment_end(assignment_id=a.id, to=AssignmentState.SUBMITTED)
        result = Result(assignment=a, sha256="0" * 64, size=3, signature="0x" + "1" * 130)
        result.artifact.save("a.json", ContentFile(b"not json"), save=False)
        result.save()
        verification.task_verify(task_id=task.id)
        assert Assignment.objects.get(id=a.id).state == AssignmentState.REJECTED
        assert Task.objects.get(id=task.id).live_replicas == 1
        Node.objects.filter(id=nodes[2].id).update(accepting=True)
        assert len(dispatch.schedule()) == 1

    def test_replicas_that_never_agree_fail_the_task(self, settings: Any) -> None:
        settings.HASHWORK = {**settings.HASHWORK, "MAX_EXTRA_REPLICAS": 0}
        task, (a, b), _ = self._leased()
        _submit(a, CHECKSUM_A)
        _submit(b, CHECKSUM_B)
        assert verification.task_verify(task_id=task.id) == TaskState.FAILED
        assert Job.objects.get(id=task.job_id).state == JobState.FAILED

    def test_verifying_twice_changes_nothing(self) -> None:
        task, (a, b), _ = self._leased()
        _submit(a, CHECKSUM_A)
        _submit(b, CHECKSUM_A)
        verification.task_verify(task_id=task.id)
        verification.task_verify(task_id=task.id)
        assert Node.objects.get(id=a.node_id).valid_count == 1


class _SpotCheckedBenchmark(BenchmarkKind, SpotCheckedKind[str]):
    """The benchmark kind with adaptive replication, as render has (without Blender)."""

    name = "spot-benchmark"

    def spot_check(self, task: Any, value: str) -> tuple[bool, str]:
        return True, "checked"


@pytest.fixture
def spot_checked() -> Iterator[None]:
    kinds.register(_SpotCheckedBenchmark())
    try:
        yield
    finally:
        kinds._REGISTRY.pop(_SpotCheckedBenchmark.name, None)


def _release(assignment_id: Any, node: Node) -> None:
    dispatch.node_release(node=node, accepting=False)


def _expire(assignment_id: Any, node: Node) -> None:
    Assignment.objects.filter(id=assignment_id).update(start_by=timezone.now() - timedelta(seconds=1))
    assert dispatch.assignments_expire() == 1


def _fail(assignment_id: Any, node: Node) -> None:
    assert dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.FAILED, reason="runner crashed")


@pytest.mark.django_db
@pytest.mark.parametrize("end", [_release, _expire, _fail], ids=["handed back", "expired", "failed"])
def test_a_spot_checked_replica_that_ends_unfinished_restores_full_replication(
    settings: Any, spot_checked: None, end: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 0.0}
    job = _job(tasks=1, replication=2, kind=_SpotCheckedBenchmark.name)
    trusted, newcomer = _nodes(2, slots=1)
    Node.objects.filter(id=trusted.id).update(consecutive_valid=12, valid_count=12)
    NodeReputation.objects.create(node=trusted, kind=_SpotCheckedBenchmark.name, score=12)
    Node.objects.filter(id=newcomer.id).update(accepting=False)
    (leased,) = dispatch.schedule()
    task = job.tasks.get()
    assert (task.replicas_wanted, task.spot_check) == (1, True)
    end(leased, trusted)
    Node.objects.filter(id=trusted.id).update(accepting=False)
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check, task.live_replicas) == (2, False, 0)
    # The next node is new: it gets a replica that will be compared with another, not the trusted node's check.
    Node.objects.filter(id=newcomer.id).update(accepting=True)
    (again,) = dispatch.schedule()
    assert Assignment.objects.get(id=again).node_id == newcomer.id
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check, task.live_replicas) == (2, False, 1)
