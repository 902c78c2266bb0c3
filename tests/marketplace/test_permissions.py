"""Who may see what: anonymous callers get 401 everywhere; other people's objects are 404, never 403."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Result
from tests.factories import AssignmentFactory, JobFactory, TaskFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(poster: Any, node: Any) -> dict[str, str]:
    """One job of the poster's, with a task, a running assignment on the operator's node and its result."""
    job = JobFactory(poster=poster.user, state=JobState.RUNNING)
    task = TaskFactory(job=job)
    assignment = AssignmentFactory(task=task, node=node.node, state=AssignmentState.RUNNING)
    result = Result(assignment=assignment, sha256="0" * 64, size=3, signature="0x" + "1" * 130)
    result.artifact.save("a.bin", ContentFile(b"abc"), save=False)
    result.save()
    return {"job": str(job.id), "assignment": str(assignment.id), "result": str(result.id)}


POSTER_ENDPOINTS = [
    ("get", "/api/jobs/"),
    ("post", "/api/jobs/"),
    ("get", "/api/jobs/{job}/"),
    ("post", "/api/jobs/{job}/cancel/"),
    ("get", "/api/jobs/{job}/escrow/"),
    ("post", "/api/jobs/{job}/escrow/"),
    ("get", "/api/jobs/{job}/tasks/"),
    ("get", "/api/jobs/{job}/results/"),
    ("get", "/api/jobs/{job}/output/"),
    ("get", "/api/results/{result}/artifact/"),
    ("post", "/api/nodes/enroll/"),
]
NODE_ENDPOINTS = [
    ("post", "/api/nodes/heartbeat/"),
    ("get", "/api/nodes/me/"),
    ("get", "/api/nodes/me/assignments/"),
    ("get", "/api/nodes/me/earnings/"),
    ("post", "/api/nodes/release/"),
    ("post", "/api/assignments/{assignment}/release/"),
    ("post", "/api/assignments/{assignment}/fail/"),
    ("post", "/api/assignments/{assignment}/start/"),
    ("post", "/api/assignments/{assignment}/result/"),
]


@pytest.mark.parametrize(("method", "url"), POSTER_ENDPOINTS + NODE_ENDPOINTS)
def test_anonymous_callers_get_401_everywhere(
    anonymous: APIClient, world: dict[str, str], method: str, url: str
) -> None:
    response = getattr(anonymous, method)(url.format(**world))
    assert response.status_code == 401
    assert response.json()["message"]
    assert response.has_header("WWW-Authenticate")


@pytest.mark.parametrize(("method", "url"), NODE_ENDPOINTS)
def test_a_user_token_does_not_open_node_endpoints(poster: Any, world: dict[str, str], method: str, url: str) -> None:
    assert getattr(poster.client, method)(url.format(**world)).status_code == 401


@pytest.mark.parametrize(
    ("method", "url"),
    [e for e in POSTER_ENDPOINTS if "{" in e[1]],
)
def test_a_stranger_gets_404_for_the_posters_objects(
    stranger: Any, world: dict[str, str], method: str, url: str
) -> None:
    response = getattr(stranger.client, method)(url.format(**world))
    assert response.status_code == 404
    assert Job.objects.get(id=world["job"]).state == JobState.RUNNING


def test_a_stranger_lists_no_jobs(stranger: Any, world: dict[str, str]) -> None:
    assert stranger.client.get("/api/jobs/").json()["count"] == 0


@pytest.mark.parametrize("action", ["start", "result", "release", "fail"])
def test_another_node_gets_404_for_an_assignment_not_its_own(
    other_node: Any, world: dict[str, str], action: str
) -> None:
    response = other_node.client.post(f"/api/assignments/{world['assignment']}/{action}/")
    assert response.status_code == 404


def test_a_wrong_node_token_is_refused(world: dict[str, str]) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Node hwn_not-a-real-token")
    response = client.post("/api/nodes/heartbeat/", {"free_slots": 1}, format="json")
    assert response.status_code == 401
    assert "enrol" in response.json()["message"]


def test_a_deactivated_node_can_no_longer_authenticate(node: Any) -> None:
    node.node.is_active = False
    node.node.save()
    assert node.client.post("/api/nodes/heartbeat/", {"free_slots": 1}, format="json").status_code == 401


def test_the_poster_downloads_a_result_artifact_once_it_is_verified(poster: Any, world: dict[str, str]) -> None:
    result = Result.objects.get(id=world["result"])
    assert poster.client.get(f"/api/results/{result.id}/artifact/").status_code == 404  # still unverified
    Assignment.objects.filter(id=result.assignment_id).update(state=AssignmentState.ACCEPTED)
    response = poster.client.get(f"/api/results/{result.id}/artifact/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"abc"


def test_where_the_escrow_is_is_public_and_says_when_there_is_no_chain(anonymous: APIClient, settings: Any) -> None:
    settings.ETH_RPC_URL = None
    response = anonymous.get("/api/chain/")
    assert response.status_code == 200
    assert response.json() == {"configured": False}


def test_a_node_sees_its_earnings_even_without_a_chain(node: Any, settings: Any) -> None:
    settings.ETH_RPC_URL = None
    body = node.client.get("/api/nodes/me/earnings/").json()
    assert body == {"settled": "0", "pending": "0", "credit": None, "payouts": []}
