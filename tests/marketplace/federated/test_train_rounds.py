"""Train jobs round by round, on the real database with real torch: the node side is the real train runner
(nodeagent.runners.train) run in-process on files fetched through the signed input URLs, and results go
through the same upload API agents use. Agents as processes are in tests/e2e/test_train.py."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from marketplace.federated import rounds as federated
from marketplace.federated.models import RoundState, TrainData, TrainRound
from marketplace.federated.updates import quorum
from marketplace.jobs import dispatch, services, verification
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task, TaskState
from marketplace.nodes.models import Node
from marketplace.payments.models import Payout
from nodeagent.runners import train as train_runner
from tests.conftest import NodePersona, Persona, make_node
from tests.marketplace.federated.helpers import coco_zip
from training.compress import compress, decompress
from training.weights import load_model

pytestmark = pytest.mark.django_db

CAPS = {"cpu_cores": 2, "ram_mb": 16000, "software": {"torch": "2.13.0"}}


def train_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"upload": "data/products.zip"},
        "model": "smallcnn",
        "image_size": 16,
        "rounds": 2,
        "participants": 2,
        "local_steps": 25,
        "batch_size": 16,
        "learning_rate": 0.05,
        "compression": {"name": "int8"},
        "round_deadline_seconds": 600,
        "seed": 5,
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return coco_zip(tmp_path_factory.mktemp("data") / "products.zip", images=30).read_bytes()


def _started(poster: Persona, dataset: bytes, **overrides: Any) -> Job:
    """Post a train job, upload its dataset, fund it and split it (round 0 opens)."""
    response = poster.client.post(
        "/api/jobs/",
        {"kind": "train", "spec": train_spec(**overrides), "price_per_replica": "100", "replication": 1},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    upload = poster.client.post(
        f"/api/jobs/{job_id}/assets/",
        {"path": "data/products.zip", "file": SimpleUploadedFile("products.zip", dataset)},
        format="multipart",
    )
    assert upload.status_code == 201, upload.json()
    services.job_transition(job_id=UUID(job_id), to=JobState.FUNDED)
    assert services.job_split(job_id=UUID(job_id)) >= 1
    return Job.objects.get(id=job_id)


def _nodes(operator: Persona, count: int, slots: int = 1) -> list[NodePersona]:
    return [make_node(operator.user, name=f"trainer-{i}", capabilities=CAPS, slots=slots) for i in range(count)]


def _run_node(node: NodePersona, assignment_id: UUID, tmp: Path, tamper: Callable[[bytes], bytes] | None = None) -> Any:
    """What an agent does: start, fetch the inputs by their signed URLs, run the train runner, upload signed."""
    assert node.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
    assignment = Assignment.objects.select_related("task__job").get(id=assignment_id)
    message = dispatch.assignment_message(assignment=assignment, task=assignment.task, job=assignment.task.job)
    # Each node has its own state folder: the top-k runner keeps its residual there between rounds.
    workdir = tmp / "state" / node.node.name / "work" / str(assignment_id)
    (workdir / "inputs").mkdir(parents=True)
    for item in message["input_urls"]:
        response = node.client.get(item["url"])
        assert response.status_code == 200
        body = b"".join(response.streaming_content)
        assert hashlib.sha256(body).hexdigest() == item["sha256"]
        (workdir / "inputs" / item["path"]).write_bytes(body)
    metrics = train_runner.run(message["payload"], workdir)
    update = (workdir / "artifact").read_bytes()
    if tamper is not None:
        update = tamper(update)
    sha256 = hashlib.sha256(update).hexdigest()
    return node.client.post(
        f"/api/assignments/{assignment_id}/result/",
        {
            "artifact": SimpleUploadedFile("update.bin", update),
            "sha256": sha256,
            "signature": node.wallet.sign_result(str(assignment_id), sha256),
            "metrics": json.dumps(metrics),
        },
        format="multipart",
    )


def _verify(assignment_id: UUID) -> str:
    return verification.task_verify(task_id=Assignment.objects.get(id=assignment_id).task_id)


def _by_node(leased: list[UUID], nodes: list[NodePersona]) -> dict[UUID, NodePersona]:
    owners = dict(Assignment.objects.filter(id__in=leased).values_list("id", "node_id"))
    return {a: next(n for n in nodes if n.node.id == owners[a]) for a in leased}


def test_a_train_job_runs_its_rounds_pays_accepted_updates_and_delivers_a_better_model(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset)
    data = TrainData.objects.get(job=job)
    assert data.classes == ["red-carton", "green-can", "blue-bottle"]
    assert len(data.shards) == 2
    assert sum(s["samples"] for s in data.shards) == data.train_samples
    nodes = _nodes(operator, 2)
    for index in range(2):
        leased = dispatch.schedule()
        assert len(leased) == 2
        owners = _by_node(leased, nodes)
        assert len({n.node.id for n in owners.values()}) == 2  # one participant per node
        for assignment_id, node in owners.items():
            assert _run_node(node, assignment_id, tmp_path / f"r{index}").status_code == 201
            _verify(assignment_id)
        assert federated.round_close(job_id=job.id, index=index, why="quorum") in {"next round", "finished"}
        rnd = TrainRound.objects.get(job=job, index=index)
        assert rnd.state == RoundState.CLOSED
        assert (rnd.metrics["accepted"], rnd.metrics["rejected"]) == (2, {})
        assert set(rnd.metrics["bytes_up"]) == {str(n.node.id) for n in nodes}
        assert all(b > 0 for b in rnd.metrics["bytes_down"].values())
    job.refresh_from_db()
    assert job.state == JobState.COMPLETED, job.state_reason
    assert Payout.objects.filter(job=job).count() == 4  # every accepted update, nothing else
    assert Task.objects.filter(job=job, state=TaskState.COMPLETED).count() == 4

    rounds = poster.client.get(f"/api/jobs/{job.id}/rounds/").json()
    assert [r["index"] for r in rounds["results"]] == [0, 1]
    final = rounds["results"][-1]["metrics"]["accuracy"]
    assert final >= rounds["untrained"]["accuracy"] + 0.25, (rounds["untrained"], final)

    download = poster.client.get(f"/api/jobs/{job.id}/output/")
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))) as archive:
        card = json.loads(archive.read("model_card.json"))
        (tmp_path / "model.safetensors").write_bytes(archive.read("model.safetensors"))
    assert card["final"]["accuracy"] == final
    assert (card["dataset"]["upload"], len(card["rounds"])) == ("data/products.zip", 2)
    state, info = load_model(tmp_path / "model.safetensors")
    assert (info.model, info.classes, info.image_size) == ("smallcnn", data.classes, 16)
    assert all(torch.isfinite(t).all() for t in state.values())


def test_one_node_never_holds_two_participants_of_a_round(poster: Persona, operator: Persona, dataset: bytes) -> None:
    _started(poster, dataset)
    (big,) = _nodes(operator, 1, slots=4)
    assert len(dispatch.schedule()) == 1
    assert Assignment.objects.filter(node=big.node).count() == 1


def _poison(update: bytes) -> bytes:
    """Noise ×100: each layer gets Gaussian noise with 100 times the spread of the honest update's values."""
    delta = decompress(update)
    seeded = torch.Generator().manual_seed(7)
    noisy = {k: v + 100 * torch.randn(v.shape, generator=seeded) * (v.std() + 1e-3) for k, v in delta.items()}
    return compress(noisy, _int8())[0]


def _int8() -> Any:
    from training.compress import CompressionSpec

    return CompressionSpec(name="int8")


def test_a_poisoned_update_is_rejected_not_paid_and_not_aggregated(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset, rounds=1, participants=3)
    nodes = _nodes(operator, 3)
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    liar = leased[0]
    for assignment_id, node in owners.items():
        tamper = _poison if assignment_id == liar else None
        assert _run_node(node, assignment_id, tmp_path, tamper).status_code == 201
        _verify(assignment_id)
    federated.round_close(job_id=job.id, index=0, why="quorum")
    rejected = Assignment.objects.get(id=liar)
    assert rejected.state == AssignmentState.REJECTED
    assert "norm" in rejected.state_reason or "loss" in rejected.state_reason, rejected.state_reason
    assert not Payout.objects.filter(assignment_id=liar).exists()
    assert Payout.objects.filter(job=job).count() == 2
    metrics = TrainRound.objects.get(job=job, index=0).metrics
    assert metrics["accepted"] == 2
    assert str(liar) in metrics["rejected"]
    assert rejected.node.invalid_count == 1


def test_a_fabricated_update_is_caught_by_the_replay_check(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, settings: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "TRAIN_REPLAY_SHARE": 1.0}
    job = _started(poster, dataset, rounds=1)
    nodes = _nodes(operator, 2)
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    faker = leased[0]

    def fabricate(update: bytes) -> bytes:
        # A random delta with the honest update's norm, layer by layer: no training was done.
        honest = decompress(update)
        fake = {k: torch.randn_like(v) * (v.norm() / max(v.numel(), 1) ** 0.5) for k, v in honest.items()}
        return compress(fake, _int8())[0]

    for assignment_id, node in owners.items():
        tamper = fabricate if assignment_id == faker else None
        assert _run_node(node, assignment_id, tmp_path, tamper).status_code == 201
        _verify(assignment_id)
    federated.round_close(job_id=job.id, index=0, why="quorum")
    fake = Assignment.objects.get(id=faker)
    assert fake.state == AssignmentState.REJECTED
    assert "replay check failed" in fake.state_reason or "loss" in fake.state_reason, fake.state_reason
    honest = Assignment.objects.get(id=leased[1])
    assert honest.state == AssignmentState.ACCEPTED
    assert "replayed" in honest.state_reason


def test_a_malformed_update_is_rejected_on_arrival_and_its_slot_reopens(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset, rounds=1)
    nodes = _nodes(operator, 3)
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    bad = leased[0]
    assert _run_node(owners[bad], bad, tmp_path, lambda update: update[: len(update) // 2]).status_code == 201
    _verify(bad)
    rejected = Assignment.objects.get(id=bad)
    assert rejected.state == AssignmentState.REJECTED
    assert rejected.state_reason.startswith("malformed update"), rejected.state_reason
    assert TrainRound.objects.get(job=job, index=0).state == RoundState.OPEN
    # The participant's slot goes to the third node (the first already had its chance this round).
    (again,) = dispatch.schedule()
    assert Assignment.objects.get(id=again).task_id == rejected.task_id
    assert Assignment.objects.get(id=again).node_id not in {rejected.node_id}


def test_a_quorum_closes_the_round_and_the_stragglers_late_update_is_refused(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset, rounds=2, participants=3)  # quorum: 2 of 3
    nodes = _nodes(operator, 3)
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    *prompt, straggler = leased
    assert owners[straggler].client.post(f"/api/assignments/{straggler}/start/").status_code == 200
    for assignment_id in prompt:
        assert _run_node(owners[assignment_id], assignment_id, tmp_path).status_code == 201
        _verify(assignment_id)
    assert quorum(3) == 2
    federated.round_close(job_id=job.id, index=0, why="quorum")
    late = Assignment.objects.get(id=straggler)
    assert late.state == AssignmentState.CANCELLED
    assert late.task.state == TaskState.CANCELLED
    beat = owners[straggler].client.post(
        "/api/nodes/heartbeat/", {"free_slots": 0, "running": [str(straggler)]}, format="json"
    )
    assert beat.json()["revoked"] == [str(straggler)]  # the agent stops the runner
    update = b"x" * 100
    sha256 = hashlib.sha256(update).hexdigest()
    response = owners[straggler].client.post(
        f"/api/assignments/{straggler}/result/",
        {
            "artifact": SimpleUploadedFile("u.bin", update),
            "sha256": sha256,
            "signature": owners[straggler].wallet.sign_result(str(straggler), sha256),
            "metrics": "{}",
        },
        format="multipart",
    )
    assert response.status_code == 409
    assert not Payout.objects.filter(assignment_id=straggler).exists()
    assert TrainRound.objects.get(job=job, index=1).state == RoundState.OPEN
    assert Task.objects.filter(job=job, group=1).count() == 3


def test_a_round_without_updates_at_its_deadline_waits_and_one_with_an_update_closes(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset, rounds=1)
    nodes = _nodes(operator, 2)
    before = TrainRound.objects.get(job=job, index=0).deadline
    assert federated.round_close(job_id=job.id, index=0, why="deadline") == "waiting"
    assert TrainRound.objects.get(job=job, index=0).deadline > before
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    assert _run_node(owners[leased[0]], leased[0], tmp_path).status_code == 201
    _verify(leased[0])
    assert federated.round_close(job_id=job.id, index=0, why="deadline") == "finished"
    job.refresh_from_db()
    assert job.state == JobState.COMPLETED
    assert TrainRound.objects.get(job=job, index=0).metrics["accepted"] == 1


def test_the_signed_input_urls_work_only_while_the_assignment_is_open(
    poster: Persona, operator: Persona, dataset: bytes, anonymous: Any
) -> None:
    _started(poster, dataset, rounds=1)
    _nodes(operator, 2)
    first, _ = dispatch.schedule()
    assignment = Assignment.objects.select_related("task__job").get(id=first)
    (weights, shard) = dispatch.assignment_message(
        assignment=assignment, task=assignment.task, job=assignment.task.job
    )["input_urls"]
    assert anonymous.get(shard["url"]).status_code == 200
    assert anonymous.get(shard["url"][:-6] + "AAAAA/").status_code == 404
    dispatch.assignment_end(assignment_id=first, to=AssignmentState.CANCELLED, reason="test")
    assert anonymous.get(weights["url"]).status_code == 404


@pytest.mark.parametrize(
    ("spec_changes", "field", "words"),
    [
        ({"dataset": {}}, "spec.dataset", "exactly one"),
        ({"dataset": {"upload": "data.tar"}}, "spec.dataset", ".zip"),
        ({"model": "gpt"}, "spec.model", "smallcnn"),
        ({"compression": {"name": "zip"}}, "spec.compression.name", "topk"),
        ({"participants": 0}, "spec.participants", "greater than or equal"),
    ],
)
def test_a_bad_train_spec_names_the_field_and_creates_nothing(
    poster: Persona, spec_changes: dict[str, Any], field: str, words: str
) -> None:
    body = {"kind": "train", "spec": train_spec(**spec_changes), "price_per_replica": "100", "replication": 1}
    response = poster.client.post("/api/jobs/", body, format="json")
    assert response.status_code == 400
    fields = response.json()["extra"]["fields"]
    assert any(name.startswith(field) and words in " ".join(text) for name, text in fields.items()), fields
    assert not Job.objects.exists()


def test_replication_must_be_one_for_train_jobs(poster: Persona) -> None:
    body = {"kind": "train", "spec": train_spec(), "price_per_replica": "100", "replication": 2}
    response = poster.client.post("/api/jobs/", body, format="json")
    assert response.status_code == 400
    assert "verified without replicas" in str(response.json()["extra"]["fields"]["replication"])


def test_the_dataset_job_must_be_the_posters_own_completed_render_job(poster: Persona, stranger: Persona) -> None:
    from tests.factories import JobFactory

    theirs = JobFactory(poster=stranger.user, kind="render", state=JobState.COMPLETED)
    mine_running = JobFactory(poster=poster.user, kind="render", state=JobState.RUNNING)
    mine_benchmark = JobFactory(poster=poster.user, kind="benchmark", state=JobState.COMPLETED)
    for job, words in [
        (theirs, "No render job of yours"),
        (mine_running, "is running"),
        (mine_benchmark, "not a render job"),
    ]:
        body = {"kind": "train", "spec": train_spec(dataset={"job": str(job.id)}), "price_per_replica": "1"}
        response = poster.client.post("/api/jobs/", {**body, "replication": 1}, format="json")
        assert response.status_code == 400
        assert words in str(response.json()["extra"]["fields"]["spec.dataset.job"]), response.json()
    assert not Job.objects.filter(kind="train").exists()


def test_a_dataset_that_is_not_coco_fails_the_job_with_the_reason(poster: Persona) -> None:
    response = poster.client.post(
        "/api/jobs/",
        {"kind": "train", "spec": train_spec(), "price_per_replica": "100", "replication": 1},
        format="json",
    )
    job_id = response.json()["id"]
    poster.client.post(
        f"/api/jobs/{job_id}/assets/",
        {"path": "data/products.zip", "file": SimpleUploadedFile("products.zip", b"not a zip at all")},
        format="multipart",
    )
    services.job_transition(job_id=UUID(job_id), to=JobState.FUNDED)
    assert services.job_split(job_id=UUID(job_id)) == 0
    job = Job.objects.get(id=job_id)
    assert job.state == JobState.FAILED
    assert "could not start" in job.state_reason
    assert "zip" in job.state_reason
    assert not Task.objects.filter(job=job).exists()


def _run_job(poster: Persona, nodes: list[NodePersona], dataset: bytes, tmp: Path, participant_0: str) -> float:
    """Run a 3-participant, 2-round job to the end; participant 0 is honest, poisons its update, or never sends
    one (the round then closes with the other two, its quorum)."""
    job = _started(poster, dataset, rounds=2, participants=3, validation_fraction=0.3)
    for index in range(2):
        # The nodes heartbeat, as agents do while they work: on a slow machine the three jobs outlast
        # NODE_ONLINE_SECONDS, and a node last heard from at its creation is offline (leased nothing).
        Node.objects.filter(id__in=[n.node.id for n in nodes]).update(last_heartbeat=timezone.now())
        for assignment_id, node in _by_node(dispatch.schedule(), nodes).items():
            first = Assignment.objects.get(id=assignment_id).task.payload["participant"] == 0
            if first and participant_0 == "absent":
                continue
            tamper = _poison if first and participant_0 == "poisoned" else None
            assert _run_node(node, assignment_id, tmp / f"{participant_0}-{index}", tamper).status_code == 201
            _verify(assignment_id)
        federated.round_close(job_id=job.id, index=index, why="quorum")
    job.refresh_from_db()
    assert job.state == JobState.COMPLETED, job.state_reason
    if participant_0 == "poisoned":
        rejected = Assignment.objects.filter(task__job=job, state=AssignmentState.REJECTED)
        assert rejected.count() == 2, [a.state_reason for a in rejected]
    return float(TrainRound.objects.get(job=job, index=1).metrics["accuracy"])


def test_with_a_poisoner_in_every_round_the_model_is_the_one_trained_without_it(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    nodes = _nodes(operator, 3)
    # 150 images, 450 crops, 135 held out: one point of accuracy is about one crop.
    bigger = coco_zip(tmp_path / "bigger.zip", images=150, seed=11).read_bytes()
    attacked = _run_job(poster, nodes, bigger, tmp_path, "poisoned")
    without = _run_job(poster, nodes, bigger, tmp_path, "absent")
    clean = _run_job(poster, nodes, bigger, tmp_path, "honest")
    # Rejected updates are not aggregated: the attacked model is exactly the one trained without the attacker;
    # the clean run also has the attacker's shard, worth a few points here.
    assert attacked == without
    assert abs(clean - attacked) <= 0.05, (clean, attacked)


def test_top_k_updates_with_error_feedback_pass_the_replay_check_round_after_round(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, settings: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "TRAIN_REPLAY_SHARE": 1.0}
    job = _started(poster, dataset, rounds=3, compression={"name": "topk", "topk_fraction": 0.05})
    nodes = _nodes(operator, 2)
    for index in range(3):
        for assignment_id, node in _by_node(dispatch.schedule(), nodes).items():
            assert _run_node(node, assignment_id, tmp_path, None).status_code == 201
            _verify(assignment_id)
        federated.round_close(job_id=job.id, index=index, why="quorum")
        metrics = TrainRound.objects.get(job=job, index=index).metrics
        assert metrics["rejected"] == {}, metrics["rejected"]
        assert len(metrics["replayed"]) == 2
    assert all(
        (tmp_path / "state" / n.node.name / "train" / str(job.id) / "residual.safetensors").exists() for n in nodes
    )
