"""Item 2 of the faults issue, in the marketplace: one malformed chunk (an annotation with no category_id, an RLE
bomb, a zip bomb, a comparison that raises) is rejected with a reason naming the problem, the two honest replicas
of its task are accepted and paid and the task completes; the marketplace's own trouble rejects nobody; and the
unpacked chunks are gone after a rejection and after the merge (item 7)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import OperationalError

from marketplace.jobs import dispatch, services, verification
from marketplace.jobs.kinds.render import RenderKind
from marketplace.jobs.models import Assignment, AssignmentState, JobOutput, JobState, Result, Task, TaskState
from marketplace.payments.models import Payout
from tests.conftest import make_node
from tests.factories import UserFactory
from tests.faults.chunks import rle_bomb, small_render_spec, write_chunk, zip_bomb_bytes, zip_bytes

pytestmark = pytest.mark.django_db

SPEC = small_render_spec(images=2)


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 1.0}
    return tmp_path / "media"


def _three_replicas() -> tuple[Task, list[Any]]:
    """A one-task render job at replication 3, leased to three nodes of three operators."""
    poster = UserFactory(username="poster")
    job = services.job_create(poster=poster, kind="render", spec=SPEC, price_per_replica=10, replication=3)
    services.job_transition(job_id=job.id, to=JobState.FUNDED)
    services.job_split(job_id=job.id)
    software = {"cpu_cores": 4, "ram_mb": 16000, "software": {"bpy": "5.0.1"}}
    for i in range(3):
        make_node(UserFactory(username=f"op{i}"), name=f"n{i}", capabilities=software)
    leased = sorted(dispatch.schedule())
    assert len(leased) == 3
    return Task.objects.get(job=job), leased


def _submit(assignment_id: Any, payload: bytes) -> Result:
    Assignment.objects.filter(id=assignment_id).update(state=AssignmentState.RUNNING)
    dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.SUBMITTED)
    result = Result(
        assignment=Assignment.objects.get(id=assignment_id), sha256="0" * 64, size=len(payload), signature="0x"
    )
    result.artifact.save("chunk.zip", ContentFile(payload), save=False)
    result.save()
    return result


def _honest(tmp_path: Path, task: Task) -> Path:
    return write_chunk(tmp_path / "honest", task.payload)


def _without_category(honest: Path, out: Path) -> bytes:
    shutil.copytree(honest, out)
    coco = json.loads((out / "annotations.json").read_text())
    del coco["annotations"][1]["category_id"]
    (out / "annotations.json").write_text(json.dumps(coco))
    return zip_bytes(out)


def _rle_bomb(honest: Path, out: Path) -> bytes:
    shutil.copytree(honest, out)
    coco = json.loads((out / "annotations.json").read_text())
    coco["annotations"][0]["segmentation"] = rle_bomb(4000, 4000)
    (out / "annotations.json").write_text(json.dumps(coco))
    return zip_bytes(out)


def _zip_bomb(honest: Path, out: Path) -> bytes:
    return zip_bomb_bytes(64 << 20)


BAD: dict[str, tuple[Callable[[Path, Path], bytes], str]] = {
    "an annotation without category_id": (_without_category, "annotation 1 has no category_id"),
    "an RLE that declares a 4000×4000 mask": (_rle_bomb, "segmentation size [4000, 4000] is not the image's [32, 32]"),
    "a zip bomb": (_zip_bomb, "more than 200× (a zip bomb)"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_malformed_replica_is_rejected_naming_the_problem_and_the_honest_two_are_paid(
    tmp_path: Path, media: Path, django_capture_on_commit_callbacks: Any, bad: str
) -> None:
    task, (first, second, third) = _three_replicas()
    honest = _honest(tmp_path, task)
    make, problem = BAD[bad]
    _submit(first, zip_bytes(honest))
    _submit(second, make(honest, tmp_path / "bad"))
    _submit(third, zip_bytes(honest))
    with django_capture_on_commit_callbacks(execute=True):
        assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    rejected = Assignment.objects.get(id=second)
    assert rejected.state == AssignmentState.REJECTED
    assert problem in rejected.state_reason, rejected.state_reason
    assert not Payout.objects.filter(assignment_id=second).exists()
    for honest_id in (first, third):
        assert Assignment.objects.get(id=honest_id).state == AssignmentState.ACCEPTED
        assert Payout.objects.filter(assignment_id=honest_id).exists()
    # Item 7: chunks are read in place from their zips: nothing of any replica is unpacked to disk.
    assert not (media / "unpacked").exists()


def test_a_comparison_that_raises_rejects_only_the_replica_that_cannot_be_compared_even_with_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, (first, second, third) = _three_replicas()
    honest = _honest(tmp_path, task)
    _submit(first, zip_bytes(honest))
    liar = _submit(second, zip_bytes(honest))
    _submit(third, zip_bytes(honest))
    agree = RenderKind.agree

    def fragile(self: RenderKind, a: Path, b: Path) -> bool:
        # A verifier bug that only this replica's files trigger (say a KeyError deep inside the comparison).
        if str(liar.id) in (a.name, b.name):
            raise KeyError("category_id")
        return agree(self, a, b)

    monkeypatch.setattr(RenderKind, "agree", fragile)
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    rejected = Assignment.objects.get(id=second)
    assert rejected.state == AssignmentState.REJECTED
    assert rejected.state_reason == "malformed result: KeyError while comparing it: 'category_id'"
    assert {Assignment.objects.get(id=a).state for a in (first, third)} == {AssignmentState.ACCEPTED}
    assert Payout.objects.filter(assignment_id__in=[first, third]).count() == 2


def test_an_unexpected_exception_while_reading_a_replica_rejects_it_as_malformed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, (first, second, third) = _three_replicas()
    honest = _honest(tmp_path, task)
    _submit(first, zip_bytes(honest))
    liar = _submit(second, zip_bytes(honest))
    _submit(third, zip_bytes(honest))
    read = RenderKind.result_value

    def fragile(self: RenderKind, result: Any) -> Path:
        if result.id == liar.id:
            raise TypeError("'NoneType' object is not subscriptable")
        return read(self, result)

    monkeypatch.setattr(RenderKind, "result_value", fragile)
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    reason = Assignment.objects.get(id=second).state_reason
    assert reason == "malformed result: TypeError while reading it: 'NoneType' object is not subscriptable"
    assert Payout.objects.filter(assignment_id__in=[first, third]).count() == 2


def test_the_marketplaces_own_trouble_rejects_nobody_and_the_next_run_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, leased = _three_replicas()
    honest = _honest(tmp_path, task)
    for assignment_id in leased:
        _submit(assignment_id, zip_bytes(honest))
    agree = RenderKind.agree

    def database_gone(self: RenderKind, a: Path, b: Path) -> bool:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(RenderKind, "agree", database_gone)
    with pytest.raises(OperationalError):
        verification.task_verify(task_id=task.id)
    assert {a.state for a in Assignment.objects.filter(id__in=leased)} == {AssignmentState.SUBMITTED}
    monkeypatch.setattr(RenderKind, "agree", agree)
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert {a.state for a in Assignment.objects.filter(id__in=leased)} == {AssignmentState.ACCEPTED}


def test_after_the_merge_nothing_of_the_jobs_results_remains_unpacked(
    tmp_path: Path, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    task, (first, second, third) = _three_replicas()
    honest = _honest(tmp_path, task)
    for assignment_id in (first, second, third):
        _submit(assignment_id, zip_bytes(honest))
    with django_capture_on_commit_callbacks(execute=True):
        assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert Task.objects.get(id=task.id).job.state == JobState.COMPLETED
    assert not (media / "unpacked").exists()  # read in place from the zips, for the verdict and the merge
    output = services.job_output_build(job_id=task.job_id)
    assert output is not None
    assert output.summary["images"] == 2
    assert JobOutput.objects.filter(job_id=task.job_id).exists()
    assert not (media / "unpacked").exists()
    # A late verify of the completed task unpacks nothing either.
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert not (media / "unpacked").exists()


def test_a_job_that_stops_unmerged_frees_its_results_unpacked_chunks(
    tmp_path: Path, media: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # A cancelled, failed or expired job is never merged: its accepted chunks must not stay unpacked forever.
    task, (first, second, _) = _three_replicas()
    honest = _honest(tmp_path, task)
    for assignment_id in (first, second):
        _submit(assignment_id, zip_bytes(honest))
    with django_capture_on_commit_callbacks(execute=True):
        verification.task_verify(task_id=task.id)
    assert not (media / "unpacked").exists()
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.work_stop(job_id=task.job_id, reason="job cancelled")
    assert not (media / "unpacked").exists()
