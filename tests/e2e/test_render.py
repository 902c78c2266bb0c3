"""A render job end to end: real agents render chunks with Blender, replicas are compared exactly, and the
merged COCO dataset is downloaded from the API and loaded with pycocotools."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from tests.e2e.stack import Stack
from tests.helpers import wait_for
from tests.marketplace.jobs.test_render_kind import render_spec
from tests.synthetic.helpers import write_glb

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path, HASHWORK_LEASE_SECONDS="300", HASHWORK_START_WINDOW_SECONDS="300").start()
    try:
        yield running
    finally:
        running.stop()


def test_a_16_image_render_job_in_chunks_of_4_on_two_agents_becomes_one_coco_dataset(
    stack: Stack, tmp_path: Path
) -> None:
    a, b = stack.agent("gpu-rig-a"), stack.agent("gpu-rig-b")
    spec = render_spec(images=16)
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={"kind": "render", "spec": spec, "price_per_replica": "1000", "replication": 2},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    job_id = reply.json()["id"]
    stack.manage("job", "fund-dev", job_id)
    assert stack.wait_job(job_id, timeout=300)["progress"] == 1.0
    # The runners reported images rendered through the agents' heartbeats (once a second; a chunk takes longer).
    reported = [x["progress"] for x in a.assignments() + b.assignments() if x["progress"] is not None]
    assert reported, "no assignment ever reported progress"
    assert all(p["total"] == 4 and 0 <= p["done"] <= 4 for p in reported), reported
    results = stack.results(job_id)
    accepted = [r for r in results if r["state"] == "accepted"]
    assert len(accepted) == 8  # 4 chunks × 2 replicas, on the two nodes
    assert {r["node"] for r in accepted} == {a.node_id, b.node_id}
    wait_for(lambda: stack.job(job_id)["output_url"] is not None, timeout=120, what="the merged dataset")
    download = stack.poster.get(f"{stack.url}/api/jobs/{job_id}/output/", timeout=60)
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        archive.extractall(tmp_path / "dataset")
    coco = COCO(str(tmp_path / "dataset" / "annotations.json"))
    assert len(coco.getImgIds()) == 16
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations
    assert len({ann["id"] for ann in annotations}) == len(annotations)
    # The merge also drew labeled previews for the dashboard.
    previews = stack.job(job_id)["preview_urls"]
    assert len(previews) == 3
    preview = stack.poster.get(f"{stack.url}{previews[0]}", timeout=30)
    assert preview.status_code == 200
    assert preview.content.startswith(b"\x89PNG")
    for ann in annotations[:20]:
        mask = coco.annToMask(ann)
        assert int(mask.sum()) == int(ann["area"])
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_a_render_job_with_an_uploaded_gltf_model_labels_it_with_its_category(stack: Stack, tmp_path: Path) -> None:
    stack.agent("rig-a")
    stack.agent("rig-b")
    spec = render_spec(images=4, chunk_size=4)
    spec["catalog"].append(
        {"kind": "asset", "category": "widget", "path": "models/widget.glb", "height_m": [0.15, 0.22], "weight": 4}
    )
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={"kind": "render", "spec": spec, "price_per_replica": "1000", "replication": 2},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    job_id = reply.json()["id"]
    glb = tmp_path / "widget.glb"
    write_glb(glb)
    with glb.open("rb") as handle:
        upload = stack.poster.post(
            f"{stack.url}/api/jobs/{job_id}/assets/",
            data={"path": "models/widget.glb"},
            files={"file": ("widget.glb", handle)},
            timeout=30,
        )
    assert upload.status_code == 201, upload.text
    stack.manage("job", "fund-dev", job_id)
    stack.wait_job(job_id, timeout=300)
    wait_for(lambda: stack.job(job_id)["output_url"] is not None, timeout=120, what="the merged dataset")
    download = stack.poster.get(f"{stack.url}/api/jobs/{job_id}/output/", timeout=60)
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        archive.extractall(tmp_path / "dataset")
    coco = COCO(str(tmp_path / "dataset" / "annotations.json"))
    (widget,) = coco.getCatIds(catNms=["widget"])
    assert coco.getAnnIds(catIds=[widget]), "the uploaded model was never placed and labeled"
