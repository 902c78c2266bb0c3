"""Node-facing endpoints: starting an assignment and submitting its result (validation and permissions)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.jobs.models import Assignment, AssignmentState, JobState, Result
from nodeagent.signer import Wallet
from tests.factories import AssignmentFactory, JobFactory, TaskFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def assignment(node: Any) -> Assignment:
    job = JobFactory(state=JobState.RUNNING)
    return AssignmentFactory(task=TaskFactory(job=job), node=node.node)


def _upload(node: Any, assignment: Assignment, data: bytes = b'{"checksum": "x"}', **overrides: Any) -> Any:
    sha256 = hashlib.sha256(data).hexdigest()
    body = {
        "artifact": SimpleUploadedFile("result.json", data),
        "sha256": sha256,
        "signature": node.wallet.sign_result(str(assignment.id), sha256),
        "metrics": json.dumps({"checksum": "x"}),
    }
    body.update(overrides)
    return node.client.post(f"/api/assignments/{assignment.id}/result/", body, format="multipart")


def test_a_node_starts_its_leased_assignment(node: Any, assignment: Assignment) -> None:
    response = node.client.post(f"/api/assignments/{assignment.id}/start/")
    assert response.status_code == 200
    assert response.json()["state"] == "running"
    assert Assignment.objects.get(id=assignment.id).started_at is not None


@pytest.mark.parametrize("state", [AssignmentState.CANCELLED, AssignmentState.EXPIRED, AssignmentState.RUNNING])
def test_starting_an_assignment_that_is_not_leased_is_a_409(node: Any, assignment: Assignment, state: str) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=state)
    response = node.client.post(f"/api/assignments/{assignment.id}/start/")
    assert response.status_code == 409
    assert state in response.json()["message"]
    assert Assignment.objects.get(id=assignment.id).state == state


def test_starting_after_the_start_window_is_a_409(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(start_by=timezone.now() - timedelta(seconds=1))
    response = node.client.post(f"/api/assignments/{assignment.id}/start/")
    assert response.status_code == 409
    assert "start window" in response.json()["message"]


def test_starting_after_the_poster_cancelled_the_job_is_a_409(node: Any, assignment: Assignment) -> None:
    poster_client = APIClient()
    poster_client.force_authenticate(assignment.task.job.poster)
    assert poster_client.post(f"/api/jobs/{assignment.task.job_id}/cancel/").status_code == 200
    assert node.client.post(f"/api/assignments/{assignment.id}/start/").status_code == 409


def test_a_running_assignment_takes_a_result_once(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    first = _upload(node, assignment)
    assert first.status_code == 201, first.json()
    assert Assignment.objects.get(id=assignment.id).state == AssignmentState.SUBMITTED
    result = Result.objects.get()
    assert result.metrics == {"checksum": "x"}
    assert result.artifact.read() == b'{"checksum": "x"}'
    again = _upload(node, assignment)
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    different = _upload(node, assignment, data=b"other bytes")
    assert different.status_code == 409
    assert Result.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"sha256": "not-hex"}, "sha256"),
        ({"signature": "0x1234"}, "signature"),
        ({"signature": ""}, "signature"),
        ({"metrics": "[1, 2]"}, "metrics"),
        ({"metrics": "{oops"}, "metrics"),
        # Node-reported figures the marketplace computes with: flat, finite, short (protocol.metrics).
        ({"metrics": json.dumps({"images": {"nested": 1}})}, "metrics"),
        ({"metrics": json.dumps({"seconds": [1, 2]})}, "metrics"),
        ({"metrics": '{"seconds": NaN}'}, "metrics"),
        ({"metrics": json.dumps({"images": 10**40})}, "metrics"),
        ({"metrics": json.dumps({"device": "x" * 257})}, "metrics"),
        ({"metrics": json.dumps({f"k{i}": 1 for i in range(65)})}, "metrics"),
        ({"artifact": "not a file"}, "artifact"),
    ],
)
def test_bad_result_input_is_named_and_nothing_is_stored(
    node: Any, assignment: Assignment, overrides: dict[str, Any], field: str
) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    response = _upload(node, assignment, **overrides)
    assert response.status_code == 400, response.json()
    assert field in response.json()["extra"]["fields"]
    assert not Result.objects.exists()
    assert Assignment.objects.get(id=assignment.id).state == AssignmentState.RUNNING


def test_a_result_signed_by_another_wallet_is_refused(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    data = b'{"checksum": "x"}'
    forged = Wallet.create().sign_result(str(assignment.id), hashlib.sha256(data).hexdigest())
    response = _upload(node, assignment, data=data, signature=forged)
    assert response.status_code == 400
    assert "signature" in response.json()["extra"]["fields"]
    assert not Result.objects.exists()
    assert Assignment.objects.get(id=assignment.id).state == AssignmentState.RUNNING


def test_a_signature_over_other_bytes_is_refused(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    other = node.wallet.sign_result(str(assignment.id), hashlib.sha256(b"other").hexdigest())
    response = _upload(node, assignment, signature=other)
    assert response.status_code == 400
    assert "signature" in response.json()["extra"]["fields"]
    assert not Result.objects.exists()


def test_an_oversized_artifact_is_refused(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    response = _upload(node, assignment, data=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413
    assert "at most 65536 bytes" in response.json()["message"]
    assert not Result.objects.exists()


def test_a_result_after_the_lease_expired_is_refused(node: Any, assignment: Assignment) -> None:
    Assignment.objects.filter(id=assignment.id).update(
        state=AssignmentState.RUNNING, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = _upload(node, assignment)
    assert response.status_code == 409
    assert "expired" in response.json()["message"]
    assert not Result.objects.exists()


def test_a_result_for_a_leased_assignment_starts_and_submits_it_in_one_call(node: Any, assignment: Assignment) -> None:
    assert Assignment.objects.get(id=assignment.id).state == AssignmentState.LEASED
    response = _upload(node, assignment)
    assert response.status_code == 201, response.json()
    stored = Assignment.objects.get(id=assignment.id)
    assert stored.state == AssignmentState.SUBMITTED
    assert stored.started_at is not None
    assert stored.submitted_at is not None
    assert stored.started_at <= stored.submitted_at
    assert Result.objects.filter(assignment=assignment).count() == 1


def test_a_result_for_a_lease_past_its_start_window_is_a_409_and_nothing_is_kept(
    node: Any, assignment: Assignment
) -> None:
    Assignment.objects.filter(id=assignment.id).update(start_by=timezone.now() - timedelta(seconds=1))
    response = _upload(node, assignment)
    assert response.status_code == 409
    assert "start window" in response.json()["message"]
    stored = Assignment.objects.get(id=assignment.id)
    assert (stored.state, stored.started_at) == (AssignmentState.LEASED, None)
    assert not Result.objects.exists()


@pytest.mark.parametrize("state", [AssignmentState.CANCELLED, AssignmentState.EXPIRED, AssignmentState.RELEASED])
def test_a_result_for_an_assignment_that_ended_is_a_409_and_nothing_is_kept(
    node: Any, assignment: Assignment, state: str
) -> None:
    Assignment.objects.filter(id=assignment.id).update(state=state)
    response = _upload(node, assignment)
    assert response.status_code == 409
    assert Assignment.objects.get(id=assignment.id).state == state
    assert not Result.objects.exists()
