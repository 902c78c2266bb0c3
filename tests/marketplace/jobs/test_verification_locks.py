"""Verification judges with no row lock held: a slow comparison never blocks the scheduler or the API on the
task's row, and a replica that arrives while the verdict is being made is judged with the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from marketplace.jobs import dispatch, kinds, verification
from marketplace.jobs.kinds.benchmark import BenchmarkKind
from marketplace.jobs.models import Assignment, AssignmentState, Task, TaskState
from marketplace.nodes.models import Node
from tests.marketplace.jobs.test_dispatch import CHECKSUM_A, _job, _nodes, _submit

pytestmark = pytest.mark.django_db(transaction=True)


class _GatedKind(BenchmarkKind):
    """The benchmark kind, whose comparison waits at a gate the test opens (a stand-in for a slow unzip)."""

    name = "gated-benchmark"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.on_enter: Any = None

    def result_value(self, result: Any) -> str:
        if not self.entered.is_set():
            self.entered.set()
            if self.on_enter is not None:
                self.on_enter()
            assert self.gate.wait(20), "the test never opened the gate"
        return super().result_value(result)


@pytest.fixture
def gated() -> Iterator[_GatedKind]:
    kind = _GatedKind()
    kinds.register(kind)
    try:
        yield kind
    finally:
        kinds._REGISTRY.pop(kind.name, None)


def _leased(replication: int = 2) -> tuple[Task, list[Assignment]]:
    job = _job(tasks=1, replication=replication, kind="gated-benchmark")
    for node in _nodes(replication + 1)[replication:]:
        Node.objects.filter(id=node.id).update(accepting=False)
    dispatch.schedule()
    task = job.tasks.get()
    return task, list(task.assignments.order_by("node__name"))


def _verify_in_thread(task: Task, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out["state"] = verification.task_verify(task_id=task.id)
        except BaseException as exc:
            out["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_no_row_lock_is_held_while_replicas_are_compared(gated: _GatedKind) -> None:
    if not connection.features.has_select_for_update_nowait:
        pytest.skip("row locks need PostgreSQL (make test uses the machine's)")
    task, (a, b) = _leased()
    _submit(a, CHECKSUM_A)
    _submit(b, CHECKSUM_A)
    out: dict[str, Any] = {}
    thread = _verify_in_thread(task, out)
    assert gated.entered.wait(20)
    # The verdict is being computed: the task's row is free (NOWAIT raises at once if anyone holds it).
    with transaction.atomic():
        assert Task.objects.select_for_update(nowait=True).filter(id=task.id).exists()
    gated.gate.set()
    thread.join(30)
    assert "error" not in out, out
    assert out["state"] == TaskState.COMPLETED
    assert {x.state for x in Assignment.objects.filter(task=task)} == {AssignmentState.ACCEPTED}


def test_a_replica_that_arrives_during_the_verdict_is_judged_with_the_others(gated: _GatedKind) -> None:
    task, (a, b) = _leased()
    _submit(a, CHECKSUM_A)
    gated.on_enter = lambda: _submit(b, CHECKSUM_A)
    out: dict[str, Any] = {}
    thread = _verify_in_thread(task, out)
    assert gated.entered.wait(20)
    gated.gate.set()
    thread.join(30)
    assert "error" not in out, out
    # Judged alone, `a` would have left the task undecided; judged again with `b`, the two agree.
    assert out["state"] == TaskState.COMPLETED
    assert {x.state for x in Assignment.objects.filter(task=task)} == {AssignmentState.ACCEPTED}
