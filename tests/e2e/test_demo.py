"""`python manage.py demo --headless` on SQLite and the embedded Redis, in a temporary directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

from marketplace.core.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
HWC = 10**18


def test_the_headless_demo_runs_funds_pays_and_refunds_the_sample_job_and_stops_everything_it_started(
    tmp_path: Path,
) -> None:
    unset = {"DATABASE_URL", "REDIS_URL", "HASHWORK_REDIS_PREFIX", "ETH_RPC_URL"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["HASHWORK_VAR_DIR"] = str(tmp_path)
    port = free_port()
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--port", str(port), "--timeout", "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    # The story is printed for people (a few of its lines here); its figures are in var/demo-summary.json.
    assert "Posted a render job through the API: 12 images in 3 chunks × 2 replicas" in out
    assert "3/3 chunks verified, 0 running, 6 replicas accepted" in out
    assert "The job is completed: every chunk's replicas agreed" in out
    assert out.count("The ledger matches the chain (payments reconcile).") == 2
    assert "Summary: 12 images rendered, held-out accuracy " in out
    assert f"Dashboard    http://127.0.0.1:{port}/" in out
    assert "Log in as    demo-poster / hashwork-demo" in out
    assert "stopped web (exit code 0)" in out
    assert summary["completed"] is True
    assert summary["redis"] == {"embedded": True, "started": True}
    assert summary["database"] == {"engine": "sqlite3", "name": str(tmp_path / "hashwork.sqlite3")}
    assert len(summary["nodes"]) == 2
    render = summary["render"]
    assert (render["images"], render["tasks"], render["replication"], render["tasks_split"]) == (12, 3, 2, 3)
    assert render["progress"] == {"verified": 3, "running": 0, "accepted": 6, "total": 3}
    assert render["state"] == "completed"
    assert set(render["replicas_per_node"]) == set(summary["nodes"])
    assert sum(render["replicas_per_node"].values()) == 6
    # Money: funded on the local chain with 2 HWC to spare, 6 replicas × 1 HWC paid, 2.5 % fee, rest refunded.
    assert render["funded"] == 815 * HWC // 100
    paid = render["settlement"]
    assert (paid["payouts"], paid["paid"]) == (6, 6 * HWC)
    assert paid["release_txs"]
    assert sorted(credit for _, credit in paid["node_credits"].values()) == [3 * HWC, 3 * HWC]
    assert paid["treasury_credit"] == 15 * HWC // 100
    assert paid["refunded"] == 2 * HWC
    assert paid["reconciled"] is True
    assert paid["mismatches"] == []
    assert summary["chain_stopped"] is True
    # The dataset was downloaded through the API and is a COCO dataset of the 12 images.
    assert render["dataset"]["images"] == 12
    assert render["dataset"]["path"] == str(tmp_path / "demo-dataset.zip")
    with zipfile.ZipFile(tmp_path / "demo-dataset.zip") as archive:
        coco = json.loads(archive.read("annotations.json"))
    assert len(coco["images"]) == 12
    assert coco["annotations"]
    assert render["dataset"]["preview"] == str(tmp_path / "demo-preview.png")
    assert (tmp_path / "demo-preview.png").stat().st_size > 0
    # Then a train job on that dataset: rounds on both nodes, a model better than the untrained one, paid.
    train = summary["train"]
    assert train["model"] == "smallcnn"
    assert train["state"] == "completed"
    assert train["rounds_closed"][0]["accepted"] == 2
    assert train["final_accuracy"] == train["rounds_closed"][-1]["accuracy"] == summary["totals"]["final_accuracy"]
    assert train["final_accuracy"] >= train["data"]["untrained_accuracy"] + 0.25, train
    assert train["settlement"]["reconciled"] is True
    assert train["settlement"]["paid"] > 0
    assert summary["totals"]["images_rendered"] == 12
    assert summary["totals"]["paid"] == paid["paid"] + train["settlement"]["paid"]
    assert summary["totals"]["refunded"] == paid["refunded"] + train["settlement"]["refunded"]
    with zipfile.ZipFile(tmp_path / "demo-model.zip") as archive:
        assert set(archive.namelist()) == {"model.safetensors", "model_card.json"}
    # A second run in the same directory reuses the chain and its contracts and replaces the old demo nodes.
    again = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--no-train", "--port", str(free_port()), "--timeout",
         "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads((tmp_path / "demo-summary.json").read_text())
    assert second["chain"] == summary["chain"]
    assert second["render"]["settlement"]["reconciled"] is True
    assert "train" not in second
    assert summary["dashboard_url"] == f"http://127.0.0.1:{port}/"
    assert summary["stopped"] == {
        name: 0 for name in ("agent-1", "agent-2", "beat", "settlement", "replay", "worker", "web")
    }
    assert summary["redis_stopped"] is True
    # Everything it started is gone: the web port is closed and no Redis state is left behind.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "redis" / "server.json").exists()
    assert (tmp_path / "hashwork.sqlite3").exists()
    journal = subprocess.run(
        [sys.executable, "-c", f"import sqlite3; print(sqlite3.connect({str(tmp_path / 'hashwork.sqlite3')!r})"
         ".execute('pragma journal_mode').fetchone()[0])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert journal.stdout.strip() == "wal"
    assert 'POST /api/jobs/ HTTP/1.1" 201' in (tmp_path / "logs" / "web.log").read_text()
