"""Runner progress: the agent's heartbeat reports it, the marketplace records it on the assignment and shows it
on the task, the job and the node's own assignment list."""

from __future__ import annotations

from typing import Any

import pytest

from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, TaskState
from tests.conftest import NodePersona, Persona
from tests.factories import JobFactory, TaskFactory

pytestmark = pytest.mark.django_db

CAPS = {"cpu_cores": 4, "ram_mb": 8000}


@pytest.fixture
def running(poster: Persona, node: NodePersona) -> tuple[Job, Assignment]:
    """A two-task job of the poster's, with one task running on `node`."""
    job = JobFactory(poster=poster.user, state=JobState.RUNNING, replication=1, task_count=2)
    for i in range(2):
        TaskFactory(job=job, index=i, replicas_wanted=1, requirements={"cpu_cores": 1, "ram_mb": 100})
    type(node.node).objects.filter(id=node.node.id).update(capabilities=CAPS, slots=1)
    (leased,) = dispatch.schedule()
    Assignment.objects.filter(id=leased).update(state=AssignmentState.RUNNING)
    return job, Assignment.objects.get(id=leased)


def _beat(node: NodePersona, **body: Any) -> Any:
    return node.client.post("/api/nodes/heartbeat/", {"free_slots": 0, **body}, format="json")


def test_progress_from_a_heartbeat_shows_on_the_task_the_job_and_the_node(
    poster: Persona, node: NodePersona, running: tuple[Job, Assignment]
) -> None:
    job, assignment = running
    response = _beat(node, running=[str(assignment.id)], progress={str(assignment.id): {"done": 3, "total": 4}})
    assert response.status_code == 200, response.json()
    assignment.refresh_from_db()
    assert assignment.progress == {"done": 3, "total": 4}

    tasks = poster.client.get(f"/api/jobs/{job.id}/tasks/").json()["results"]
    by_index = {t["index"]: t for t in tasks}
    assert by_index[assignment.task.index]["progress"] == {"done": 3, "total": 4}
    assert by_index[1 - assignment.task.index]["progress"] is None
    # One task three quarters done, the other not started: 3/8 of the job.
    assert poster.client.get(f"/api/jobs/{job.id}/").json()["progress"] == 0.375

    mine = node.client.get("/api/nodes/me/assignments/").json()["results"]
    assert mine[0]["progress"] == {"done": 3, "total": 4}


def test_completed_tasks_count_whole_in_the_jobs_progress(poster: Persona, running: tuple[Job, Assignment]) -> None:
    job, assignment = running
    job.tasks.exclude(id=assignment.task_id).update(state=TaskState.COMPLETED)
    assert poster.client.get(f"/api/jobs/{job.id}/").json()["progress"] == 0.5


@pytest.mark.parametrize(
    ("progress", "problem"),
    [
        ({"done": 5, "total": 4}, "exceeds total"),
        ({"done": 1, "total": 0}, "total"),
        ({"done": -1, "total": 4}, "done"),
        ({"total": 4}, "done"),
    ],
)
def test_bad_progress_is_refused_and_changes_nothing(
    node: NodePersona, running: tuple[Job, Assignment], progress: dict[str, int], problem: str
) -> None:
    _, assignment = running
    before = Assignment.objects.get(id=assignment.id).lease_expires_at
    response = _beat(node, running=[str(assignment.id)], progress={str(assignment.id): progress})
    assert response.status_code == 400
    fields = response.json()["extra"]["fields"]
    assert any(name.startswith("progress") and problem in f"{name} {text}" for name, text in fields.items()), fields
    after = Assignment.objects.get(id=assignment.id)
    assert (after.progress, after.lease_expires_at) == (None, before)


def test_progress_for_an_assignment_not_reported_running_is_refused(
    node: NodePersona, running: tuple[Job, Assignment]
) -> None:
    _, assignment = running
    response = _beat(node, running=[], progress={str(assignment.id): {"done": 1, "total": 4}})
    assert response.status_code == 400
    assert "not in running" in str(response.json()["extra"]["fields"]["progress"])
    assert Assignment.objects.get(id=assignment.id).progress is None


def test_a_node_cannot_set_progress_on_another_nodes_assignment(
    other_node: NodePersona, running: tuple[Job, Assignment]
) -> None:
    _, assignment = running
    response = _beat(other_node, running=[str(assignment.id)], progress={str(assignment.id): {"done": 4, "total": 4}})
    assert response.status_code == 200
    assert response.json()["revoked"] == [str(assignment.id)]
    assert Assignment.objects.get(id=assignment.id).progress is None
