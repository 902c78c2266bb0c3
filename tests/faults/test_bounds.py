"""Issue [faults] item 6: bounds. A running assignment's lease used to be extended at every heartbeat forever (the
kind's time limit held only if the agent enforced it); a train spec could ask for replays that take hours of the
marketplace's CPU, killed by the time limit and retried forever on the scheduler's pool. Now a lease never passes
the kind's time limit + a margin, a spec whose replay would exceed the CPU budget is refused at posting with the
estimate, round closes have a queue and a worker pool of their own, and every queue has its time limits."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from django.utils import timezone

from marketplace.core.localstack import LocalStack
from marketplace.core.queues import MARKETPLACE_QUEUES, REPLAY_QUEUES, TASK_QUEUES, TIME_LIMITS, Queue, TaskName
from marketplace.federated import spec as train_spec
from marketplace.federated.start import spec_of
from marketplace.jobs import dispatch, kinds
from marketplace.jobs.leases import lease_bound, lease_margin
from marketplace.jobs.models import Assignment, AssignmentState, Job
from tests.adversarial.test_sybil_replication import Rig, benchmark_job, enrol, operator_client
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

LIMIT = kinds.get("benchmark").time_limit_seconds


def _beat(rig: Rig, running: list[str]) -> list[str]:
    reply = rig.client.post(
        "/api/nodes/heartbeat/", {"free_slots": 0, "running": running}, format="json", REMOTE_ADDR=rig.address
    )
    assert reply.status_code == 200, reply.json()
    return [str(a) for a in reply.json()["revoked"]]


def _running(rig: Rig) -> Assignment:
    (assignment_id,) = dispatch.schedule()
    assert rig.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
    return Assignment.objects.get(id=assignment_id)


def _started_ago(assignment: Assignment, seconds: float) -> None:
    """Time passes: the assignment started `seconds` ago (its heartbeats kept the lease alive until now)."""
    now = timezone.now()
    Assignment.objects.filter(id=assignment.id).update(
        started_at=now - timedelta(seconds=seconds), lease_expires_at=now + timedelta(seconds=30)
    )


def test_a_node_that_heartbeats_forever_on_a_running_assignment_loses_it_after_the_kinds_time_limit() -> None:
    hoarder = enrol(operator_client("hoarder"), "hoarder", "203.0.113.10")
    benchmark_job(replication=1)
    assignment = _running(hoarder)
    for elapsed in (60, LIMIT / 2, LIMIT, LIMIT + lease_margin(LIMIT) - 5):
        _started_ago(assignment, elapsed)
        assert _beat(hoarder, [str(assignment.id)]) == []  # still within its time limit + margin
    _started_ago(assignment, LIMIT + lease_margin(LIMIT) + 1)
    assert _beat(hoarder, [str(assignment.id)]) == [str(assignment.id)]
    assignment.refresh_from_db()
    assert assignment.state == AssignmentState.EXPIRED
    assert f"ran past its benchmark time limit of {LIMIT} s" in assignment.state_reason
    # The harm did not happen: the task is not held hostage; another node gets it at the next scheduler run.
    other = enrol(operator_client("olga"), "other", "198.51.100.20")
    (again,) = dispatch.schedule()
    assert Assignment.objects.get(id=again).node_id == other.node_id
    assert assignment.task.assignments.filter(state=AssignmentState.LEASED).count() == 1


def test_an_honest_node_within_the_time_limit_keeps_its_lease_but_never_past_the_bound() -> None:
    honest = enrol(operator_client("olga"), "honest", "198.51.100.20")
    benchmark_job(replication=1)
    assignment = _running(honest)
    _started_ago(assignment, 30)
    assert _beat(honest, [str(assignment.id)]) == []
    assignment.refresh_from_db()
    lease = dispatch.lease_windows("benchmark")[1]
    assert assignment.lease_expires_at > timezone.now() + timedelta(seconds=lease - 5)  # a full lease: far from it
    _started_ago(assignment, LIMIT - 10)
    assert _beat(honest, [str(assignment.id)]) == []
    assignment.refresh_from_db()
    assert assignment.state == AssignmentState.RUNNING
    assert assignment.started_at is not None
    # Near the limit the lease is the bound, not a full lease more.
    assert assignment.lease_expires_at == lease_bound("benchmark", assignment.started_at)
    assert assignment.lease_expires_at < timezone.now() + timedelta(seconds=lease)


HOURS_OF_REPLAY = {
    "dataset": {"upload": "data/products.zip"},
    "model": "resnet18",
    "image_size": 128,
    "batch_size": 1024,
    "local_steps": 10_000,
}


def _post(poster: Persona, spec: dict[str, Any]) -> Any:
    body = {"kind": "train", "spec": spec, "price_per_replica": "100", "replication": 1}
    return poster.client.post("/api/jobs/", body, format="json")


def test_a_train_spec_whose_replay_would_take_hours_is_refused_at_posting_with_its_estimate(poster: Persona) -> None:
    refused = _post(poster, HOURS_OF_REPLAY)
    assert refused.status_code == 400
    fields = refused.json()["extra"]["fields"]
    assert list(fields) == ["spec.local_steps"]
    (message,) = fields["spec.local_steps"]
    hours = train_spec.replay_seconds(model="resnet18", image_size=128, batch_size=1024, local_steps=10_000) / 3600
    assert hours > 10
    assert message.startswith("a replay of 10000 steps of resnet18 at 128 px, batch 1024 would take about ")
    assert f"about {hours:.0f} h of marketplace CPU; at most 60 s (≈ 1 step) is allowed" in message
    assert not Job.objects.exists()
    # The honest path: the defaults and the demo's spec are well within the budget.
    from marketplace.core.samples import SAMPLE_TRAIN_SPEC

    for spec in ({"dataset": {"upload": "data/a.zip"}}, {**SAMPLE_TRAIN_SPEC, "dataset": {"upload": "data/b.zip"}}):
        assert _post(poster, spec).status_code == 201
    assert Job.objects.count() == 2


def test_a_round_whose_replays_together_exceed_the_round_budget_is_refused_naming_participants(
    poster: Persona, settings: Any
) -> None:
    settings.TRAIN_ROUND_REPLAY_BUDGET_SECONDS = 10
    spec = {"dataset": {"upload": "data/p.zip"}, "local_steps": 200, "batch_size": 32, "participants": 8}
    one = train_spec.replay_seconds(model="smallcnn", image_size=32, batch_size=32, local_steps=200)
    assert one < 10 < 8 * one
    refused = _post(poster, spec)
    assert refused.status_code == 400
    (message,) = refused.json()["extra"]["fields"]["spec.participants"]
    assert message.startswith(f"a round's replays (8 participants × about {one:.0f} s) would take about")
    assert f"at most 10 s (≈ {int(10 // one)} participants at this cost)" in message
    assert _post(poster, {**spec, "participants": int(10 // one)}).status_code == 201


def test_a_budget_lowered_after_posting_refuses_new_specs_but_never_stops_a_posted_job(
    poster: Persona, settings: Any
) -> None:
    posted = _post(poster, {"dataset": {"upload": "data/p.zip"}})
    assert posted.status_code == 201
    settings.TRAIN_REPLAY_BUDGET_SECONDS = 0.001
    assert spec_of(Job.objects.get(id=posted.json()["id"])).local_steps == 20
    refused = _post(poster, {"dataset": {"upload": "data/p.zip"}})
    assert refused.status_code == 400
    assert "at most 0 s (≈ 0 steps) is allowed" in refused.json()["extra"]["fields"]["spec.local_steps"][0]
    assert "spec.batch_size" in refused.json()["extra"]["fields"]


def test_the_replay_estimate_is_not_below_what_a_replay_costs_on_this_cpu() -> None:
    from tests.training.helpers import squares
    from training.local import HyperParams, train_local
    from training.weights import initial_state

    crops = squares(600, image_size=32, seed=1)
    state = initial_state("smallcnn", len(crops.classes), 32, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the estimate is for one core
    try:
        started = time.process_time()
        train_local("smallcnn", len(crops.classes), 32, state, crops, HyperParams(batch_size=32), 60, seed=3)
        spent = time.process_time() - started
    finally:
        torch.set_num_threads(threads)
    estimate = train_spec.replay_seconds(model="smallcnn", image_size=32, batch_size=32, local_steps=60)
    # CPU time, not wall time: other load on the machine does not count. Generous both ways, but a model made
    # much heavier (or a constant much too small) fails it.
    assert spent < 3 * estimate, f"a replay took {spent:.2f} s of CPU; the estimate says {estimate:.2f} s"
    assert estimate < 20 * spent


def test_round_closes_run_on_a_queue_and_a_worker_of_their_own_and_every_queue_has_time_limits(tmp_path: Path) -> None:
    assert TASK_QUEUES[TaskName.ROUND_CLOSE] == Queue.REPLAY
    assert set(TIME_LIMITS) == set(Queue)
    for limits in TIME_LIMITS.values():
        assert 0 < limits["soft_time_limit"] < limits["time_limit"]
    assert set(TASK_QUEUES) == set(TaskName)
    # The local stack (the demo, the end-to-end tests) starts a worker for the replay queue alone.
    stack = LocalStack(tmp_path, {})
    started: dict[str, list[str]] = {}
    stack.supervisor.start = lambda name, argv, env: started.setdefault(name, argv)  # type: ignore[method-assign]
    stack.start_services(port=1, web_workers=1, settlement=False)

    def queues(name: str) -> set[str]:
        argv = started[name]
        return set(argv[argv.index("--queues") + 1].split(","))

    assert queues("replay") == {q.value for q in REPLAY_QUEUES} == {Queue.REPLAY.value}
    assert started["replay"][started["replay"].index("--concurrency") + 1] == "1"
    assert queues("worker") == {q.value for q in MARKETPLACE_QUEUES}
    assert Queue.REPLAY.value not in queues("worker")
