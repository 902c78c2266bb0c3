"""Uploads are capped while they stream: a result or an asset one byte over its endpoint's cap, a JSON body over
the body cap, a form field over Django's field cap, are refused with a 413 that names the cap, before the bytes
past the cap reach a disk; nothing is kept (no temporary file, no media file, no row) and the honest upload that
follows works. Before, the caps were checked only after Django had written the whole upload to a temporary file,
and DRF read JSON bodies whole.

Django's real test client drives the real views, parsers and upload handlers; a recording handler behind the cap
observes how many bytes ever reached the handlers that store files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test import Client

from marketplace.jobs import kinds
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobAsset, JobState, Result
from tests.factories import AssignmentFactory, JobFactory, TaskFactory
from tests.marketplace.jobs.test_render_kind import render_spec

pytestmark = pytest.mark.django_db

BENCHMARK_CAP = kinds.get("benchmark").artifact_max_bytes
ASSET_CAP = 8 * 1024


class RecordingHandler(FileUploadHandler):
    """Passes every chunk on and remembers the most file bytes that got past the handlers before it."""

    most = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.seen = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.seen += len(raw_data)
        RecordingHandler.most = max(RecordingHandler.most, self.seen)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture(autouse=True)
def disks(settings: Any, tmp_path: Path) -> tuple[Path, Path]:
    """Media and temporary uploads in folders of this test; anything above 1 KiB goes to a temporary file."""
    media, temp = tmp_path / "media", tmp_path / "upload-temp"
    media.mkdir()
    temp.mkdir()
    settings.MEDIA_ROOT = media
    settings.FILE_UPLOAD_TEMP_DIR = str(temp)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.FILE_UPLOAD_HANDLERS = [
        "marketplace.core.uploads.CappedUploadHandler",
        f"{__name__}.RecordingHandler",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    RecordingHandler.most = 0
    return media, temp


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def running(node: Any) -> Assignment:
    job = JobFactory(state=JobState.RUNNING)
    assignment: Assignment = AssignmentFactory(task=TaskFactory(job=job), node=node.node)
    Assignment.objects.filter(id=assignment.id).update(state=AssignmentState.RUNNING)
    return assignment


def _result(node: Any, assignment: Assignment, data: bytes, **overrides: Any) -> Any:
    sha256 = hashlib.sha256(data).hexdigest()
    body = {
        "artifact": SimpleUploadedFile("result.json", data),
        "sha256": sha256,
        "signature": node.wallet.sign_result(str(assignment.id), sha256),
        "metrics": json.dumps({"checksum": "x"}),
        **overrides,
    }
    return node.client.post(f"/api/assignments/{assignment.id}/result/", body, format="multipart")


def test_a_result_one_byte_over_its_kinds_cap_is_a_413_and_nothing_is_kept(
    node: Any, running: Assignment, disks: tuple[Path, Path]
) -> None:
    media, temp = disks
    response = _result(node, running, b"x" * (BENCHMARK_CAP + 1))
    assert response.status_code == 413, response.content
    body = response.json()
    assert str(BENCHMARK_CAP) in body["message"]
    assert "benchmark result" in body["message"]
    assert body["extra"] == {"max_bytes": BENCHMARK_CAP}
    # The handlers that store files never got more than the cap, and what they stored is gone.
    assert 0 < RecordingHandler.most <= BENCHMARK_CAP
    assert _files_under(temp) == []
    assert _files_under(media) == []
    assert not Result.objects.exists()
    assert Assignment.objects.get(id=running.id).state == AssignmentState.RUNNING
    # The node can still hand in its honest result, at exactly the cap.
    honest = _result(node, running, b"y" * BENCHMARK_CAP)
    assert honest.status_code == 201, honest.json()
    assert Result.objects.get().size == BENCHMARK_CAP
    assert Assignment.objects.get(id=running.id).state == AssignmentState.SUBMITTED
    assert _files_under(temp) == []


def test_a_body_far_over_the_cap_is_refused_before_any_file_byte_is_read(node: Any, running: Assignment) -> None:
    response = _result(node, running, b"x" * (BENCHMARK_CAP + 2 * 2**20))
    assert response.status_code == 413
    assert RecordingHandler.most == 0
    assert not Result.objects.exists()


def test_the_artifact_limits_setting_is_the_cap_while_streaming(node: Any, running: Assignment, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "ARTIFACT_LIMITS": {"benchmark": 2000}}
    response = _result(node, running, b"x" * 2001)
    assert response.status_code == 413
    assert "2000 bytes" in response.json()["message"]
    assert _result(node, running, b"x" * 2000).status_code == 201


def test_another_nodes_assignment_is_a_404_whatever_the_size(other_node: Any, running: Assignment) -> None:
    response = _result(other_node, running, b"x" * (BENCHMARK_CAP + 1))
    assert response.status_code == 404
    assert RecordingHandler.most == 0
    assert not Result.objects.exists()


def test_form_fields_over_djangos_field_cap_are_a_413_naming_it(node: Any, running: Assignment, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    response = _result(node, running, b"{}", metrics=json.dumps({"pad": "p" * 5000}))
    assert response.status_code == 413
    assert "4096" in response.json()["message"]
    assert not Result.objects.exists()


def test_more_files_than_allowed_are_refused_with_a_400(node: Any, running: Assignment, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    extra = SimpleUploadedFile("extra.bin", b"z")
    response = _result(node, running, b"{}", extra=extra)
    assert response.status_code == 400
    assert "at most 1 files" in response.json()["message"]
    assert not Result.objects.exists()


@pytest.fixture
def asset_job(poster: Any, monkeypatch: pytest.MonkeyPatch) -> Job:
    monkeypatch.setattr(kinds.get("render"), "asset_max_bytes", ASSET_CAP)
    spec = render_spec()
    spec["catalog"].append({"kind": "asset", "category": "widget", "path": "models/widget.glb", "height_m": [0.1, 0.2]})
    job: Job = JobFactory(poster=poster.user, kind="render", spec=spec, state=JobState.DRAFT)
    return job


def _asset(client: Any, job: Job, data: bytes, **extra: Any) -> Any:
    body = {"path": "models/widget.glb", "file": SimpleUploadedFile("widget.glb", data)}
    return client.post(f"/api/jobs/{job.id}/assets/", body, **extra)


def test_an_asset_one_byte_over_the_cap_is_a_413_and_nothing_is_kept(
    poster: Any, asset_job: Job, disks: tuple[Path, Path]
) -> None:
    media, temp = disks
    response = _asset(poster.client, asset_job, b"g" * (ASSET_CAP + 1), format="multipart")
    assert response.status_code == 413, response.content
    assert f"at most {ASSET_CAP} bytes" in response.json()["message"]
    assert "render job's asset" in response.json()["message"]
    assert RecordingHandler.most <= ASSET_CAP
    assert _files_under(temp) == []
    assert _files_under(media) == []
    assert not JobAsset.objects.exists()
    honest = _asset(poster.client, asset_job, b"g" * ASSET_CAP, format="multipart")
    assert honest.status_code == 201, honest.json()
    assert JobAsset.objects.get().size == ASSET_CAP


def test_a_dashboard_session_upload_is_capped_too(poster: Any, asset_job: Job, disks: tuple[Path, Path]) -> None:
    # Session authentication reads the body for its CSRF check, before DRF knows the user: the cap holds there.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(poster.user)
    browser.get("/accounts/login/")
    csrf = browser.cookies["csrftoken"].value
    over = _asset(browser, asset_job, b"g" * (ASSET_CAP + 1), HTTP_X_CSRFTOKEN=csrf)
    assert over.status_code == 413, over.content
    assert str(ASSET_CAP) in over.json()["message"]
    assert _files_under(disks[1]) == []
    assert not JobAsset.objects.exists()
    honest = _asset(browser, asset_job, b"g" * 100, HTTP_X_CSRFTOKEN=csrf)
    assert honest.status_code == 201, honest.content


def test_a_stranger_uploading_to_the_posters_job_gets_a_404_not_its_cap(stranger: Any, asset_job: Job) -> None:
    response = _asset(stranger.client, asset_job, b"g" * (ASSET_CAP + 1), format="multipart")
    assert response.status_code == 404
    assert RecordingHandler.most == 0
    assert not JobAsset.objects.exists()


def test_a_file_sent_to_an_endpoint_that_takes_none_is_capped_by_the_default(poster: Any, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "UPLOAD_DEFAULT_MAX_BYTES": 1000}
    body = {"kind": "benchmark", "junk": SimpleUploadedFile("junk.bin", b"j" * 1001)}
    response = poster.client.post("/api/jobs/", body, format="multipart")
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["message"]
    assert RecordingHandler.most <= 1000
    assert not Job.objects.exists()


def _job_body(**extra: Any) -> dict[str, Any]:
    return {"kind": "benchmark", "spec": {"tasks": 2, "matrix_size": 8, "seed": 1}, "price_per_replica": "10", **extra}


def test_a_json_body_over_the_cap_is_a_413_naming_the_cap(poster: Any, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "JSON_MAX_BYTES": 4096}
    body = json.dumps(_job_body(note="n" * 4096))
    response = poster.client.post("/api/jobs/", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["message"] == "JSON bodies are at most 4096 bytes; this one is larger."
    assert not Job.objects.exists()
    honest = poster.client.post("/api/jobs/", json.dumps(_job_body()), content_type="application/json")
    assert honest.status_code == 201, honest.json()


def test_the_default_json_cap_is_one_mebibyte(poster: Any) -> None:
    body = json.dumps(_job_body(note="n" * 2**20))
    response = poster.client.post("/api/jobs/", body, content_type="application/json")
    assert response.status_code == 413
    assert str(2**20) in response.json()["message"]
    assert not Job.objects.exists()


def test_a_form_body_over_the_cap_is_a_413(poster: Any, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "JSON_MAX_BYTES": 1000}
    response = poster.client.post(
        "/api/jobs/", "kind=benchmark&pad=" + "p" * 1000, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413
    assert "Form bodies are at most 1000 bytes" in response.json()["message"]
