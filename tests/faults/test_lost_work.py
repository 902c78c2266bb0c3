"""Issue [faults] item 5: nothing is queued only once. A verification, a split, a merge or a round's close used to
be queued once, after its commit: a publish that failed (the broker restarting) answered 500 for work that was
done and was never retried, and a task that died was never run again (tasks stayed submitted, jobs funded,
completed jobs had no output). Now a failed publish is retried, logged and never raises; the work sweep (beat)
queues again what is due and not done; and a poison message that kills its worker is dropped after three
deliveries instead of forever. Real Redis (its queues read back), real PostgreSQL, real Celery workers."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from marketplace.celery import app
from marketplace.core import deliveries
from marketplace.core.queues import Queue, TaskName
from marketplace.core.redis_admin import admin_client, forget, prefixed
from marketplace.federated import rounds
from marketplace.federated.models import TrainRound
from marketplace.jobs import dispatch, services
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task, TaskState
from marketplace.jobs.services import sweep
from marketplace.nodes.models import Node
from tests.adversarial.test_sybil_replication import benchmark_job, enrol, honest_checksum, operator_client
from tests.factories import AssignmentFactory, JobFactory, TaskFactory
from tests.helpers import wait_for

LATER = timedelta(minutes=2)  # past the sweep's grace period


def _broker_down(*args: Any, **kwargs: Any) -> None:
    raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def queued(queue: Queue) -> list[tuple[str, list[Any]]]:
    """The messages waiting in one of the marketplace's queues in Redis: (task name, arguments)."""
    messages = [json.loads(raw) for raw in admin_client().lrange(prefixed(queue.value), 0, -1)]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def lose(queue: Queue) -> None:
    """The broker loses what was queued (a restart without persistence)."""
    admin_client().delete(prefixed(queue.value))


@contextmanager
def worker(*queues: Queue) -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      queues=[q.value for q in queues]):  # fmt: skip
        yield


def _two_replicas_leased() -> tuple[Task, list[Any]]:
    rigs = [
        enrol(operator_client("alice"), "rig-a", "203.0.113.10"),
        enrol(operator_client("bob"), "rig-b", "198.51.100.20"),
    ]
    job = benchmark_job(replication=2)
    assert len(dispatch.schedule()) == 2
    return job.tasks.get(), rigs


@pytest.mark.django_db(transaction=True)
def test_a_result_whose_verify_cannot_be_queued_is_answered_201_and_the_sweep_gets_it_verified_and_paid(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task, rigs = _two_replicas_leased()
    lose(Queue.VERIFY)
    monkeypatch.setattr(app, "send_task", _broker_down)
    with caplog.at_level(logging.WARNING, logger="marketplace.core.enqueue"):
        for rig in rigs:
            rig.submit(rig.leased()[0], honest_checksum(task))  # asserts 201: the upload was stored
    # The task waits in the set of tasks to verify (verify_batches); the drain that would verify it is not queued.
    assert "could not queue jobs.verify_drain()" in caplog.text
    assert "the work sweep queues it again" in caplog.text
    assert Assignment.objects.filter(task=task, state=AssignmentState.SUBMITTED).count() == 2
    monkeypatch.undo()
    assert queued(Queue.VERIFY) == []  # nothing reached the broker
    assert sweep.work_sweep()["verify"] == 0  # the first message may only be late: not yet
    with worker(Queue.VERIFY):
        assert sweep.work_sweep(now=timezone.now() + LATER)["verify"] == 1
        wait_for(lambda: Task.objects.get(id=task.id).state == TaskState.COMPLETED, timeout=30, what="the verdict")
        wait_for(lambda: Job.objects.get(id=task.job_id).state == JobState.COMPLETED, timeout=30, what="the job done")
    states = set(Assignment.objects.filter(task=task).values_list("state", flat=True))
    assert states == {AssignmentState.ACCEPTED}
    assert sweep.work_sweep(now=timezone.now() + LATER) == {"verify": 0, "split": 0, "complete": 0, "merge": 0}


@pytest.mark.django_db(transaction=True)
def test_a_funding_whose_split_cannot_be_queued_does_not_raise_and_the_sweep_splits_the_job(
    monkeypatch: pytest.MonkeyPatch, dev_funding: None
) -> None:
    job = JobFactory(spec={"tasks": 4, "matrix_size": 16, "seed": 1}, task_count=4)
    monkeypatch.setattr(app, "send_task", _broker_down)
    services.job_fund_dev(job_id=job.id, actor=job.poster)  # committed: the caller sees no error
    monkeypatch.undo()
    assert Job.objects.get(id=job.id).state == JobState.FUNDED
    assert not Task.objects.filter(job=job).exists()
    with worker(Queue.SCHEDULER):
        assert sweep.work_sweep(now=timezone.now() + LATER)["split"] == 1
        wait_for(lambda: Job.objects.get(id=job.id).state == JobState.RUNNING, timeout=30, what="the split")
    assert Task.objects.filter(job=job).count() == 4
    assert sweep.work_sweep(now=timezone.now() + LATER)["split"] == 0


@pytest.mark.django_db
def test_a_render_job_whose_completion_and_merge_were_lost_is_completed_and_merged_by_the_sweep(
    django_capture_on_commit_callbacks: Any,
) -> None:
    job = JobFactory(kind="render", state=JobState.RUNNING, task_count=2)
    for index in range(2):
        TaskFactory(job=job, index=index, state=TaskState.COMPLETED)
    lose(Queue.AGGREGATE)
    with django_capture_on_commit_callbacks(execute=True):
        # The verdict committed, but the process died before the job's completion ran after it.
        assert sweep.work_sweep()["complete"] == 1
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED
    assert queued(Queue.AGGREGATE) == [(TaskName.RENDER_MERGE.value, [str(job.id)])]
    lose(Queue.AGGREGATE)  # … and its merge was lost too
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep.work_sweep()["merge"] == 0  # within the grace period
        assert sweep.work_sweep(now=timezone.now() + LATER)["merge"] == 1
        assert sweep.work_sweep(now=timezone.now() + LATER)["merge"] == 0  # once per SWEEP_REQUEUE_SECONDS
    assert queued(Queue.AGGREGATE) == [(TaskName.RENDER_MERGE.value, [str(job.id)])]


def _round_with_its_quorum_in(*, submitted_ago: timedelta) -> Job:
    job = JobFactory(kind="train", state=JobState.RUNNING, replication=1, spec={"participants": 2}, task_count=2)
    TrainRound.objects.create(
        job=job, index=0, weights_name="w", weights_sha256="0" * 64, weights_size=1,
        deadline=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    for p in range(2):
        task = TaskFactory(job=job, index=p, group=0, replicas_wanted=1, live_replicas=1, state=TaskState.RUNNING)
        AssignmentFactory(task=task, state=AssignmentState.SUBMITTED, submitted_at=timezone.now() - submitted_ago)
    return job


@pytest.mark.django_db
def test_a_round_whose_quorum_is_in_but_whose_close_was_lost_is_asked_to_close_again(
    django_capture_on_commit_callbacks: Any,
) -> None:
    job = _round_with_its_quorum_in(submitted_ago=timedelta(minutes=5))
    fresh = _round_with_its_quorum_in(submitted_ago=timedelta(seconds=1))
    lose(Queue.REPLAY)

    @deliveries.bounded(TaskName.ROUND_CLOSE, identity=2)
    def closing(job_id: str, index: int, why: str) -> int:
        return rounds.rounds_due()

    with django_capture_on_commit_callbacks(execute=True):
        # While a close of the round runs, nothing more is asked …
        assert closing(str(job.id), 0, "quorum") == 0
        # … once none runs, the round (not the one whose last update just came in) is asked to close, once.
        assert rounds.rounds_due() == 1
        assert rounds.rounds_due() == 0
    # Only the round whose quorum has waited: the one whose last update just came in gets its own close first.
    assert queued(Queue.REPLAY) == [(TaskName.ROUND_CLOSE.value, [str(job.id), 0, "quorum"])]
    assert TrainRound.objects.filter(job=fresh, state="open").exists()


@pytest.mark.django_db
def test_an_item_that_never_finishes_runs_three_times_then_once_an_hour_and_one_that_finishes_is_forgotten() -> None:
    runs: list[str] = []
    given_up: list[str] = []

    @deliveries.bounded(TaskName.TASK_VERIFY, on_poisoned=given_up.append)
    def verify(task_id: str) -> str:
        runs.append(task_id)
        if task_id == "bad":
            raise MemoryError("the worker would be killed here")
        return "ok"

    for _ in range(deliveries.MAX_DELIVERIES):
        with pytest.raises(MemoryError):
            verify("bad")
    assert verify("bad") == deliveries.POISONED
    assert verify("bad") == deliveries.POISONED  # dropped, not run, not given up twice
    assert (len(runs), given_up) == (deliveries.MAX_DELIVERIES, ["bad"])
    assert deliveries.poisoned(TaskName.TASK_VERIFY, "bad")
    admin_client().delete(deliveries.item_key(TaskName.TASK_VERIFY, ["bad"]) + ":poisoned")  # the hour is over
    with pytest.raises(MemoryError):
        verify("bad")  # one more try …
    assert verify("bad") == deliveries.POISONED  # … and poisoned again at once
    assert len(runs) == deliveries.MAX_DELIVERIES + 1
    # The honest path: an item that finishes leaves no count behind, however often it runs.
    for _ in range(deliveries.MAX_DELIVERIES + 2):
        assert verify("good") == "ok"
    assert deliveries.deliveries(TaskName.TASK_VERIFY, "good") == 0
    assert not deliveries.running(TaskName.TASK_VERIFY, "good")


def _worker_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL,
            "HASHWORK_REDIS_PREFIX": settings.REDIS_PREFIX}  # fmt: skip


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_verify_that_kills_its_worker_is_dropped_after_three_deliveries_and_rejects_nothing(
    tmp_path: Any,
) -> None:
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("a second process needs a database server (DATABASE_URL); SQLite's test database is in memory")
    task, rigs = _two_replicas_leased()
    for rig in rigs:
        rig.submit(rig.leased()[0], honest_checksum(task))
    lose(Queue.VERIFY)
    log = (tmp_path / "worker.log").open("wb")
    worker_process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--queues", Queue.VERIFY.value,
         "--concurrency", "1", "--pool", "prefork", "--include", "tests.faults.stall_worker",
         "--loglevel", "INFO", "--hostname", f"stall-{os.getpid()}@%h"],
        env=_worker_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = deliveries.item_key(TaskName.TASK_VERIFY, [task.id]) + ":running"
    try:
        sweep.work_sweep(now=timezone.now() + LATER)  # queues the verification
        killed: list[int] = []
        for _ in range(deliveries.MAX_DELIVERIES):
            # The OOM killer strikes the child that runs it, each time it is delivered again.
            wait_for(lambda: admin_client().get(running) not in (None, *[str(k).encode() for k in killed]),
                     timeout=90, what=f"delivery {len(killed) + 1} of the verification")  # fmt: skip
            pid = int(admin_client().get(running) or 0)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        wait_for(lambda: deliveries.poisoned(TaskName.TASK_VERIFY, task.id), timeout=60, what="the item given up on")
        assert worker_process.poll() is None, "the worker itself keeps running"
        assert queued(Queue.VERIFY) == []  # the last delivery was acknowledged: no fourth kill
    finally:
        worker_process.send_signal(signal.SIGTERM)
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()
            worker_process.wait()
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert f"jobs.task_verify('{task.id}',): 3 deliveries did not finish" in output
    # Nothing was rejected: the replicas may be honest, the fault was the marketplace's.
    assert Assignment.objects.filter(task=task, state=AssignmentState.SUBMITTED).count() == 2
    assert not Node.objects.filter(invalid_count__gt=0).exists()
    # While it is given up on, the sweep leaves it alone (once its own once-per window has passed, too) …
    forget(f"sweep:{TaskName.TASK_VERIFY.value}:{task.id}")
    assert sweep.work_sweep(now=timezone.now() + LATER)["verify"] == 0
    # … and it is still due: the hour after, it gets one more try.
    assert UUID(str(task.id)) in sweep.verifies_due(now=timezone.now() + LATER)


def test_a_running_marker_lives_while_its_delivery_runs_and_lapses_soon_after_its_worker_is_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sweep leaves a running item alone; a marker that outlived its killed worker would hide the item from the
    # sweep (found by tests/faults/test_process_kills.py[worker]: a verify stuck for the queue's whole time limit).
    monkeypatch.setattr(deliveries, "RUNNING_TTL_SECONDS", 1)
    monkeypatch.setattr(deliveries, "RUNNING_RENEW_SECONDS", 0.2)

    @deliveries.bounded(TaskName.TASK_VERIFY)
    def verify(task_id: str) -> str:
        time.sleep(2.5 if task_id == "slow" else 60)
        return "ok"

    seen: list[bool] = []
    checker = threading.Timer(2.0, lambda: seen.append(deliveries.running(TaskName.TASK_VERIFY, "slow")))
    checker.start()
    assert verify("slow") == "ok"
    checker.join()
    assert seen == [True]  # renewed past its 1 s life while it ran
    assert not deliveries.running(TaskName.TASK_VERIFY, "slow")

    child = multiprocessing.get_context("fork").Process(target=verify, args=("killed",))
    child.start()
    wait_for(lambda: deliveries.running(TaskName.TASK_VERIFY, "killed"), timeout=10, what="the delivery to start")
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    wait_for(lambda: not deliveries.running(TaskName.TASK_VERIFY, "killed"), timeout=3, what="the marker to lapse")
    assert deliveries.deliveries(TaskName.TASK_VERIFY, "killed") == 1  # it still counts as a delivery not finished
