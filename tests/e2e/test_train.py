"""Train jobs end to end: real node agents train in federated rounds on a dataset a render job made; a poisoned
update is rejected; an agent killed mid-round does not stall the job; the model downloads and predicts.

The first test's agents run every render and train assignment in the Docker sandbox (one container each, counted
from the engine's events): the sandboxed results verify, aggregate and learn as the forked child's do."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.dockerized import image
from tests.e2e.sandboxed import SANDBOXED, containers_created, containers_left
from tests.e2e.stack import ROOT, Stack
from tests.helpers import wait_for
from tests.marketplace.federated.helpers import coco_zip
from tests.marketplace.jobs.test_render_kind import render_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path, HASHWORK_LEASE_SECONDS="20", HASHWORK_START_WINDOW_SECONDS="20").start()
    try:
        yield running
    finally:
        running.stop()


def _post_train(stack: Stack, spec: dict[str, Any]) -> str:
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={"kind": "train", "spec": spec, "price_per_replica": "1000", "replication": 1},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def _rounds(stack: Stack, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.poster.get(f"{stack.url}/api/jobs/{job_id}/rounds/", timeout=10).json()
    return body


def test_a_train_job_on_a_render_jobs_dataset_learns_and_its_model_predicts(stack: Stack, tmp_path: Path) -> None:
    image("nodeagent")  # fails with what to do when Docker or the image is missing (skips on HASHWORK_NO_DOCKER=1)
    with containers_created() as created:
        render_id, job_id, final = _render_then_train_sandboxed(stack)
        for agent in stack.agents:
            status = stack.nodeagent(agent.name, "status", env=agent.env)
            assert "sandbox: docker (hashwork/nodeagent:local)" in status.stdout, status.stdout
            ran = [x for x in agent.assignments() if x["state"] in {"submitted", "accepted"}]
            assert {x["kind"] for x in ran} == {"render", "train"}
            # A container for every assignment (the engine's events reach the counter a moment after they happen).
            node, wanted = agent.node_id, len(ran)
            wait_for(lambda n=node, w=wanted: created[n] >= w, timeout=10, what=f"a container per assignment of {node}")
            assert containers_left(agent.node_id) == []
    _predicts(stack, tmp_path, render_id, job_id, final)


def _render_then_train_sandboxed(stack: Stack) -> tuple[str, str, float]:
    stack.agent("rig-a", extra_env=SANDBOXED), stack.agent("rig-b", extra_env=SANDBOXED)
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={
            "kind": "render",
            "spec": render_spec(images=16, chunk_size=8),
            "price_per_replica": "10",
            "replication": 1,
        },
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    render_id = reply.json()["id"]
    stack.manage("job", "fund-dev", render_id)
    stack.wait_job(render_id, timeout=300)
    wait_for(lambda: stack.job(render_id)["output_url"] is not None, timeout=120, what="the merged dataset")

    spec = {
        "dataset": {"job": render_id},
        "image_size": 24,
        "rounds": 3,
        "participants": 2,
        "local_steps": 30,
        "batch_size": 16,
        "compression": {"name": "int8"},
        "round_deadline_seconds": 120,
    }
    job_id = _post_train(stack, spec)
    stack.manage("job", "fund-dev", job_id)
    job = stack.wait_job(job_id, timeout=400)
    rounds = _rounds(stack, job_id)
    assert [r["index"] for r in rounds["results"]] == [0, 1, 2]
    for r in rounds["results"]:
        assert r["metrics"]["accepted"] == 2, r["metrics"]
        assert len(r["metrics"]["bytes_up"]) == 2  # two different nodes each round
    final: float = rounds["results"][-1]["metrics"]["accuracy"]
    untrained = rounds["untrained"]["accuracy"]
    assert final >= untrained + 0.15, (untrained, final)
    assert job["progress"] == 1.0
    return render_id, job_id, final


def _predicts(stack: Stack, tmp_path: Path, render_id: str, job_id: str, final: float) -> None:
    download = stack.poster.get(f"{stack.url}/api/jobs/{job_id}/output/", timeout=30)
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        archive.extractall(tmp_path / "model")
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["dataset"]["render_job"] == render_id
    assert card["final"]["accuracy"] == final
    # One crop of a rendered product, predicted from the command line.
    dataset = stack.poster.get(f"{stack.url}/api/jobs/{render_id}/output/", timeout=30)
    with zipfile.ZipFile(io.BytesIO(dataset.content)) as archive:
        coco = json.loads(archive.read("annotations.json"))
        ann = coco["annotations"][0]
        entry = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        picture = Image.open(io.BytesIO(archive.read(entry["file_name"]))).convert("RGB")
    x, y, w, h = ann["bbox"]
    picture.crop((int(x), int(y), int(x + w) + 1, int(y + h) + 1)).save(tmp_path / "crop.png")
    done = subprocess.run(
        [sys.executable, "-m", "training", "predict", str(tmp_path / "model" / "model.safetensors"),
         str(tmp_path / "crop.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {c["name"] for c in coco["categories"]}
    assert any(name in done.stdout for name in names), done.stdout


POISON = """
import nodeagent.runners as runners
_honest = runners.RUNNERS['train']
def _poison(payload, workdir=None):
    import torch
    from training.compress import CompressionSpec, compress, decompress
    metrics = _honest(payload, workdir)
    delta = decompress((workdir / 'artifact').read_bytes())
    noisy = {k: v + 100 * torch.randn_like(v) * (float(v.std()) + 1e-3) for k, v in delta.items()}
    (workdir / 'artifact').write_bytes(compress(noisy, CompressionSpec(**payload['compression']))[0])
    return metrics
runners.RUNNERS['train'] = _poison
"""


def test_a_poisoned_update_is_rejected_and_a_killed_agent_does_not_stall_the_job(stack: Stack, tmp_path: Path) -> None:
    patch = tmp_path / "poison"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(POISON)
    honest = stack.agent("honest")
    liar = stack.agent("liar", extra_env={"PYTHONPATH": str(patch)})
    doomed = stack.agent("doomed")
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={
            "kind": "train",
            "spec": {
                "dataset": {"upload": "products.zip"},
                "image_size": 16,
                "rounds": 3,
                "participants": 3,
                "local_steps": 150,  # long enough to kill an agent while it trains
                "batch_size": 16,
                "round_deadline_seconds": 45,
            },
            "price_per_replica": "1000",
            "replication": 1,
        },
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    job_id = reply.json()["id"]
    data = coco_zip(tmp_path / "products.zip", images=30)
    with data.open("rb") as handle:
        upload = stack.poster.post(
            f"{stack.url}/api/jobs/{job_id}/assets/", data={"path": "products.zip"}, files={"file": handle}, timeout=30
        )
    assert upload.status_code == 201, upload.text
    stack.manage("job", "fund-dev", job_id)

    def doomed_training() -> bool:
        return any(a["state"] == "running" and a["progress"] for a in doomed.assignments())

    wait_for(doomed_training, timeout=120, what="the doomed agent to be training")
    doomed.signal_group(signal.SIGKILL)  # a crash: nothing is handed back, the lease must expire
    stack.wait_job(job_id, timeout=400)
    rounds = _rounds(stack, job_id)["results"]
    assert len(rounds) == 3
    lies = [x for x in liar.assignments() if x["state"] in {"accepted", "rejected"}]
    assert lies, "the liar never got to submit"
    assert all(x["state"] == "rejected" for x in lies), lies
    # Rejected outright for its norm or held-out loss, or replayed (its norm stands out) and caught by the replay.
    assert all(any(w in x["state_reason"] for w in ("norm", "loss", "replay check failed")) for x in lies), lies
    assert liar.me()["valid_count"] == 0
    assert honest.me()["valid_count"] >= 3
    # The killed agent's participant expired (or its round closed without it); every round still closed.
    assert {x["state"] for x in doomed.assignments()} & {"expired", "cancelled"}
    assert all(r["state"] == "closed" and r["metrics"]["accepted"] >= 1 for r in rounds)
    assert rounds[-1]["metrics"]["accuracy"] >= _rounds(stack, job_id)["untrained"]["accuracy"] + 0.3
