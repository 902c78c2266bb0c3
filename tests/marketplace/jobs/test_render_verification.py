"""Adaptive replication and spot checks for render jobs, on a chunk really rendered with Blender."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from marketplace.jobs import dispatch, reputation, services, verification
from marketplace.jobs.models import Assignment, AssignmentState, JobNodeBlock, JobState, Result, Task, TaskState
from marketplace.nodes.models import Node, NodeReputation
from marketplace.payments.models import Payout
from synthetic import render_chunk
from tests.conftest import make_node
from tests.factories import UserFactory
from tests.marketplace.jobs.test_render_kind import render_spec

SPEC = render_spec(images=2, chunk_size=2, output={"resolution": [48, 48], "samples": 2})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's only chunk, rendered once for the module, exactly as an honest node renders it."""
    from marketplace.jobs import kinds

    kind = kinds.get("render")
    (plan,) = kind.split(kinds.parse_spec(kind, SPEC))
    out = tmp_path_factory.mktemp("chunk") / "chunk"
    render_chunk(plan.payload["spec"], plan.payload["start"], plan.payload["count"], out)
    return out


def _zip(chunk: Path) -> bytes:
    archive = chunk.parent / f"{chunk.name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(chunk.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(chunk).as_posix())
    return archive.read_bytes()


def _job_and_nodes(settings: Any, *, p: float, trusted: bool) -> tuple[Task, list[Node]]:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": p}
    poster = UserFactory(username="poster")
    job = services.job_create(poster=poster, kind="render", spec=SPEC, price_per_replica=10, replication=2)
    services.job_transition(job_id=job.id, to=JobState.FUNDED)
    services.job_split(job_id=job.id)
    software = {"cpu_cores": 4, "ram_mb": 16000, "software": {"bpy": "5.0.1"}}
    # One operator per node: replicas of a task go to distinct operators.
    nodes = [make_node(UserFactory(username=f"op{i}"), name=f"n{i}", capabilities=software).node for i in range(2)]
    if trusted:
        Node.objects.filter(id=nodes[0].id).update(consecutive_valid=12, valid_count=12)
        NodeReputation.objects.create(node=nodes[0], kind="render", score=12)
    Node.objects.filter(id=nodes[1].id).update(accepting=False)
    return Task.objects.get(job=job), nodes


def _submit(assignment_id: Any, payload: bytes) -> None:
    Assignment.objects.filter(id=assignment_id).update(state=AssignmentState.RUNNING)
    dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.SUBMITTED)
    assignment = Assignment.objects.get(id=assignment_id)
    result = Result(assignment=assignment, sha256="0" * 64, size=len(payload), signature="0x" + "1" * 130)
    result.artifact.save("chunk.zip", ContentFile(payload), save=False)
    result.save()


pytestmark = pytest.mark.django_db


def test_a_trusted_nodes_chunk_is_spot_checked_instead_of_replicated(settings: Any, rendered: Path) -> None:
    task, (trusted, _) = _job_and_nodes(settings, p=0.0, trusted=True)
    (leased,) = dispatch.schedule()
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check) == (1, True)
    _submit(leased, _zip(rendered))
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    assert Assignment.objects.get(id=leased).state == AssignmentState.ACCEPTED
    assert Payout.objects.filter(assignment_id=leased).exists()
    assert Node.objects.get(id=trusted.id).consecutive_valid == 13
    # Another poster's job, replication 2, at the market price (its own): the passed spot check earns reputation.
    assert reputation.reputation_of(node_id=trusted.id, kind="render") == pytest.approx(13, abs=0.01)
    assert "re-rendered in full" in Assignment.objects.get(id=leased).state_reason


def test_new_nodes_are_always_replicated(settings: Any) -> None:
    task, (_, other) = _job_and_nodes(settings, p=0.0, trusted=False)
    Node.objects.filter(id=other.id).update(accepting=True)
    assert len(dispatch.schedule()) == 2
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check) == (2, False)


def test_with_p_one_even_trusted_nodes_are_replicated(settings: Any) -> None:
    task, _ = _job_and_nodes(settings, p=1.0, trusted=True)
    dispatch.schedule()
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check) == (2, False)


def test_a_tampered_chunk_fails_its_spot_check_and_full_replication_returns(
    settings: Any, rendered: Path, tmp_path: Path
) -> None:
    task, (trusted, other) = _job_and_nodes(settings, p=0.0, trusted=True)
    (leased,) = dispatch.schedule()
    forged = tmp_path / "forged"
    shutil.copytree(rendered, forged)
    # Swap the two images' instance masks: every label pass still looks valid on its own.
    first, second = sorted((forged / "instance").iterdir())
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    _submit(leased, _zip(forged))
    assert verification.task_verify(task_id=task.id) == TaskState.RUNNING
    rejected = Assignment.objects.get(id=leased)
    assert rejected.state == AssignmentState.REJECTED
    assert "spot check failed" in rejected.state_reason
    task.refresh_from_db()
    assert (task.replicas_wanted, task.spot_check) == (2, False)
    liar = Node.objects.get(id=trusted.id)
    assert (liar.invalid_count, liar.consecutive_valid) == (1, 0)
    assert reputation.reputation_of(node_id=trusted.id, kind="render") == 0
    assert JobNodeBlock.objects.get(job_id=task.job_id, node_id=trusted.id).blocked
    assert not Payout.objects.filter(assignment_id=leased).exists()
    Node.objects.filter(id=other.id).update(accepting=True)
    assert len(dispatch.schedule()) == 1  # a replica on the other node; the liar already had its chance


def test_the_odd_replica_out_is_rejected_with_the_image_pass_and_metric_that_differ(
    settings: Any, rendered: Path, tmp_path: Path
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 1.0}
    poster = UserFactory(username="poster")
    job = services.job_create(poster=poster, kind="render", spec=SPEC, price_per_replica=10, replication=2)
    services.job_transition(job_id=job.id, to=JobState.FUNDED)
    services.job_split(job_id=job.id)
    software = {"cpu_cores": 4, "ram_mb": 16000, "software": {"bpy": "5.0.1"}}
    # One operator per node: replicas of a task go to distinct operators.
    nodes = [make_node(UserFactory(username=f"op{i}"), name=f"n{i}", capabilities=software).node for i in range(3)]
    Node.objects.filter(id=nodes[2].id).update(accepting=False)
    task = Task.objects.get(job=job)
    honest, liar = dispatch.schedule()
    forged = tmp_path / "forged"
    shutil.copytree(rendered, forged)
    # Nudge one box of the first image by a pixel: the rest of the chunk is honest.
    annotations = json.loads((forged / "annotations.json").read_text())
    annotations["annotations"][0]["bbox"][0] += 1
    (forged / "annotations.json").write_text(json.dumps(annotations))
    _submit(honest, _zip(rendered))
    _submit(liar, _zip(forged))
    assert verification.task_verify(task_id=task.id) == TaskState.RUNNING  # one against one: a third decides
    Node.objects.filter(id=nodes[2].id).update(accepting=True)
    (third,) = dispatch.schedule()
    _submit(third, _zip(rendered))
    assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
    rejected = Assignment.objects.get(id=liar)
    assert rejected.state == AssignmentState.REJECTED
    assert rejected.state_reason.startswith("differs from the majority of replicas: ")
    assert "annotations" in rejected.state_reason or "bbox" in rejected.state_reason, rejected.state_reason
    assert {Assignment.objects.get(id=a).state for a in (honest, third)} == {AssignmentState.ACCEPTED}
