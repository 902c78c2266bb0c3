"""Posting, listing, reading and cancelling jobs through the REST API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from marketplace.jobs import services
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task, TaskState
from tests.factories import AssignmentFactory, JobFactory, TaskFactory

pytestmark = pytest.mark.django_db

VALID = {
    "kind": "benchmark",
    "spec": {"tasks": 5, "matrix_size": 64, "seed": 3},
    "price_per_replica": "1000000000000000000",
    "replication": 3,
}


def _with(**changes: Any) -> dict[str, Any]:
    body = {**VALID, "spec": dict(VALID["spec"])}
    for key, value in changes.items():
        if key.startswith("spec__"):
            name = key.removeprefix("spec__")
            if value is ...:
                body["spec"].pop(name)
            else:
                body["spec"][name] = value
        elif value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


def test_a_poster_posts_a_job_and_gets_an_exact_integer_quote(poster: Any) -> None:
    response = poster.client.post("/api/jobs/", VALID, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "draft"
    assert body["task_count"] == 5
    assert body["quote"] == str(5 * 3 * 10**18)
    job = Job.objects.get(id=body["id"])
    assert job.poster == poster.user
    assert job.quote == 15 * 10**18
    assert isinstance(job.quote, int)


def test_quotes_stay_exact_far_beyond_64_bits(poster: Any) -> None:
    price = 2**200 + 12345
    response = poster.client.post("/api/jobs/", _with(price_per_replica=str(price)), format="json")
    assert response.status_code == 201
    assert int(response.json()["quote"]) == price * 5 * 3
    assert Job.objects.get().quote == price * 5 * 3


def test_a_quote_that_does_not_fit_in_256_bits_is_refused(poster: Any) -> None:
    response = poster.client.post("/api/jobs/", _with(price_per_replica=str(2**255)), format="json")
    assert response.status_code == 400
    assert "price_per_replica" in response.json()["extra"]["fields"]
    assert not Job.objects.exists()


def test_the_quote_is_price_times_tasks_times_replication() -> None:
    assert services.quote_compute(price_per_replica=7, task_count=11, replication=3) == 231
    assert services.quote_compute(price_per_replica=10**18 + 1, task_count=10_000, replication=7) == (
        (10**18 + 1) * 70_000
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "mining"}, "kind"),
        ({"kind": ...}, "kind"),
        ({"spec": "tasks=5"}, "spec"),
        ({"spec": ...}, "spec"),
        ({"spec__tasks": 0}, "spec.tasks"),
        ({"spec__tasks": 10_001}, "spec.tasks"),
        ({"spec__tasks": "5"}, "spec.tasks"),
        ({"spec__tasks": 2.5}, "spec.tasks"),
        ({"spec__tasks": ...}, "spec.tasks"),
        ({"spec__matrix_size": 4}, "spec.matrix_size"),
        ({"spec__matrix_size": 100_000}, "spec.matrix_size"),
        ({"spec__matrix_size": True}, "spec.matrix_size"),
        ({"spec__seed": -1}, "spec.seed"),
        ({"spec__seed": 2**64}, "spec.seed"),
        ({"spec__colour": "red"}, "spec.colour"),
        ({"price_per_replica": "-5"}, "price_per_replica"),
        ({"price_per_replica": "1.5"}, "price_per_replica"),
        ({"price_per_replica": "0"}, "price_per_replica"),
        ({"price_per_replica": "ten"}, "price_per_replica"),
        ({"price_per_replica": str(2**256)}, "price_per_replica"),
        ({"price_per_replica": ...}, "price_per_replica"),
        ({"replication": 0}, "replication"),
        ({"replication": 8}, "replication"),
        ({"deadline": "yesterday"}, "deadline"),
        ({"deadline": (timezone.now() - timedelta(hours=1)).isoformat()}, "deadline"),
        ({"deadline": (timezone.now() + timedelta(days=365)).isoformat()}, "deadline"),
    ],
)
def test_an_invalid_field_is_named_and_nothing_is_written(poster: Any, changes: dict[str, Any], field: str) -> None:
    response = poster.client.post("/api/jobs/", _with(**changes), format="json")
    assert response.status_code == 400, response.json()
    body = response.json()
    assert set(body) == {"message", "extra"}
    assert field in body["extra"]["fields"], body
    assert not Job.objects.exists()
    assert not Task.objects.exists()


def test_a_body_that_is_not_json_is_a_clear_400(poster: Any) -> None:
    response = poster.client.post("/api/jobs/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]
    assert not Job.objects.exists()


def test_a_poster_lists_and_reads_only_their_own_jobs(poster: Any, stranger: Any) -> None:
    mine = JobFactory(poster=poster.user)
    JobFactory(poster=stranger.user)
    listing = poster.client.get("/api/jobs/").json()
    assert [j["id"] for j in listing["results"]] == [str(mine.id)]
    assert poster.client.get(f"/api/jobs/{mine.id}/").json()["id"] == str(mine.id)


def test_the_job_list_filters_by_state(poster: Any) -> None:
    JobFactory(poster=poster.user, state=JobState.DRAFT)
    running = JobFactory(poster=poster.user, state=JobState.RUNNING)
    listing = poster.client.get("/api/jobs/?state=running").json()
    assert [j["id"] for j in listing["results"]] == [str(running.id)]


def test_an_unknown_state_or_kind_filter_is_a_400_naming_it_not_an_empty_page(poster: Any) -> None:
    JobFactory(poster=poster.user, state=JobState.RUNNING)
    reply = poster.client.get("/api/jobs/?state=bogus&kind=.exe")
    assert reply.status_code == 400
    assert set(reply.json()["extra"]["fields"]) == {"state", "kind"}
    assert poster.client.get("/api/jobs/?state=running&kind=benchmark").json()["count"] == 1


def test_cancelling_a_running_job_revokes_its_pending_work(poster: Any) -> None:
    job = JobFactory(poster=poster.user, state=JobState.RUNNING)
    done = TaskFactory(job=job, state=TaskState.COMPLETED)
    pending = TaskFactory(job=job)
    leased = AssignmentFactory(task=pending)
    accepted = AssignmentFactory(task=done, state=AssignmentState.ACCEPTED)
    response = poster.client.post(f"/api/jobs/{job.id}/cancel/")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert Task.objects.get(id=pending.id).state == TaskState.CANCELLED
    assert Task.objects.get(id=done.id).state == TaskState.COMPLETED
    assert Assignment.objects.get(id=leased.id).state == AssignmentState.CANCELLED
    assert Assignment.objects.get(id=accepted.id).state == AssignmentState.ACCEPTED


def test_cancelling_a_finished_job_is_a_409_that_names_its_state(poster: Any) -> None:
    job = JobFactory(poster=poster.user, state=JobState.COMPLETED)
    response = poster.client.post(f"/api/jobs/{job.id}/cancel/")
    assert response.status_code == 409
    assert "completed" in response.json()["message"]
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED


def test_the_task_list_shows_each_task_and_its_replicas(poster: Any) -> None:
    job = JobFactory(poster=poster.user, state=JobState.RUNNING)
    task = TaskFactory(job=job, index=0)
    AssignmentFactory(task=task)
    body = poster.client.get(f"/api/jobs/{job.id}/tasks/").json()
    assert body["count"] == 1
    assert body["results"][0]["replicas"] == 1


def test_jobs_past_their_deadline_expire_and_their_work_stops() -> None:
    overdue = JobFactory(state=JobState.RUNNING)
    task = TaskFactory(job=overdue)
    assignment = AssignmentFactory(task=task)
    Job.objects.filter(id=overdue.id).update(deadline=timezone.now() - timedelta(minutes=1))
    on_time = JobFactory(state=JobState.RUNNING)
    assert services.jobs_expire() == 1
    assert Job.objects.get(id=overdue.id).state == JobState.EXPIRED
    assert Job.objects.get(id=on_time.id).state == JobState.RUNNING
    assert Task.objects.get(id=task.id).state == TaskState.CANCELLED
    assert Assignment.objects.get(id=assignment.id).state == AssignmentState.CANCELLED
    assert services.jobs_expire() == 0
