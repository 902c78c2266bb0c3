"""The `render` job kind in the marketplace: its spec is synthetic's, validated with field paths; one task
per chunk."""

from __future__ import annotations

from typing import Any

import pytest

from marketplace.jobs import services
from marketplace.jobs.models import Job, JobState, Task
from tests.factories import JobFactory
from tests.synthetic.helpers import small_spec


def render_spec(**overrides: Any) -> dict[str, Any]:
    """synthetic's small test spec without its glTF asset (uploads are not taken yet), 10 images, chunks of 4."""
    spec = small_spec(images=10, output={"resolution": [64, 64], "samples": 4})
    spec["catalog"] = [item for item in spec["catalog"] if item["kind"] != "asset"]
    spec["chunk_size"] = 4
    spec.update(overrides)
    return spec


pytestmark = pytest.mark.django_db


def test_a_render_job_is_quoted_per_chunk(poster: Any) -> None:
    body = {"kind": "render", "spec": render_spec(), "price_per_replica": "1000", "replication": 2}
    response = poster.client.post("/api/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = response.json()
    assert job["task_count"] == 3  # 4 + 4 + 2 images
    assert job["quote"] == str(3 * 2 * 1000)
    assert job["spec"]["chunk_size"] == 4


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"output": {"resolution": [64]}}, "spec.output.resolution[1]"),
        ({"images": 0}, "spec.images"),
        ({"seed": "eleven"}, "spec.seed"),
        ({"chunk_size": 0}, "spec.chunk_size"),
        ({"chunk_size": 1000}, "spec.chunk_size"),
        ({"scene": {"warehouse": {}}}, "spec.scene"),
    ],
)
def test_an_invalid_render_spec_names_the_field_and_writes_nothing(
    poster: Any, overrides: dict[str, Any], field: str
) -> None:
    body = {"kind": "render", "spec": render_spec(**overrides), "price_per_replica": "1000", "replication": 2}
    response = poster.client.post("/api/jobs/", body, format="json")
    assert response.status_code == 400, response.json()
    fields = response.json()["extra"]["fields"]
    assert any(name.startswith(field) for name in fields), fields
    assert not Job.objects.exists()


def test_splitting_makes_one_task_per_chunk_that_needs_blender() -> None:
    job = JobFactory(kind="render", spec=render_spec(), task_count=3, state=JobState.FUNDED)
    assert services.job_split(job_id=job.id) == 3
    tasks = list(Task.objects.filter(job=job).order_by("index"))
    assert [(t.payload["start"], t.payload["count"]) for t in tasks] == [(0, 4), (4, 4), (8, 2)]
    assert all(t.requirements["software"] == ["bpy"] for t in tasks)
    assert "chunk_size" not in tasks[0].payload["spec"]


def test_the_output_of_a_job_that_is_not_complete_is_a_409_naming_its_state(poster: Any) -> None:
    job = JobFactory(poster=poster.user, kind="render", spec=render_spec(), state=JobState.RUNNING)
    response = poster.client.get(f"/api/jobs/{job.id}/output/")
    assert response.status_code == 409
    assert "running" in response.json()["message"]


def _asset_job(poster: Any) -> str:
    spec = render_spec()
    spec["catalog"].append({"kind": "asset", "category": "widget", "path": "models/widget.glb", "height_m": [0.1, 0.2]})
    reply = poster.client.post(
        "/api/jobs/", {"kind": "render", "spec": spec, "price_per_replica": "1", "replication": 2}, format="json"
    )
    assert reply.status_code == 201, reply.json()
    return str(reply.json()["id"])


def _upload(client: Any, job_id: str, path: str, data: bytes = b"glTF-binary") -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        f"/api/jobs/{job_id}/assets/",
        {"path": path, "file": SimpleUploadedFile(path.rsplit("/", 1)[-1], data)},
        format="multipart",
    )


def test_a_job_that_needs_an_asset_waits_for_its_upload_before_it_starts(poster: Any, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "DEV_FUNDING": True}
    job_id = _asset_job(poster)
    from marketplace.core.exceptions import Conflict

    with pytest.raises(Conflict, match=r"models/widget\.glb"):
        services.job_fund_dev(job_id=job_id, actor=poster.user)
    job = Job.objects.get(id=job_id)
    assert job.state == JobState.DRAFT
    assert "waiting for assets: models/widget.glb" in job.state_reason
    response = _upload(poster.client, job_id, "models/widget.glb")
    assert response.status_code == 201, response.json()
    assert response.json()["size"] == len(b"glTF-binary")
    services.job_fund_dev(job_id=job_id, actor=poster.user)
    assert Job.objects.get(id=job_id).state == JobState.FUNDED


@pytest.mark.parametrize(("path", "field"), [("models/other.glb", "path"), ("../etc/passwd", "path")])
def test_an_upload_the_spec_does_not_use_is_refused(poster: Any, path: str, field: str) -> None:
    job_id = _asset_job(poster)
    response = _upload(poster.client, job_id, path)
    assert response.status_code == 400
    assert field in response.json()["extra"]["fields"]
    assert not Job.objects.get(id=job_id).assets.exists()


def test_assets_cannot_be_changed_once_the_job_has_started(poster: Any) -> None:
    job_id = _asset_job(poster)
    Job.objects.filter(id=job_id).update(state=JobState.RUNNING)
    response = _upload(poster.client, job_id, "models/widget.glb")
    assert response.status_code == 409


def test_a_stranger_cannot_upload_to_the_posters_job(poster: Any, stranger: Any) -> None:
    job_id = _asset_job(poster)
    assert _upload(stranger.client, job_id, "models/widget.glb").status_code == 404
