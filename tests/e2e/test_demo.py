"""`python manage.py demo --headless` on SQLite and the embedded Redis, in a temporary directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_headless_demo_runs_funds_pays_and_refunds_the_sample_job_and_stops_everything_it_started(
    tmp_path: Path,
) -> None:
    unset = {"DATABASE_URL", "REDIS_URL", "HASHWORK_REDIS_PREFIX", "ETH_RPC_URL"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["HASHWORK_VAR_DIR"] = str(tmp_path)
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--port", str(port), "--timeout", "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "embedded Valkey started" in out
    assert f"sqlite3 {tmp_path / 'hashwork.sqlite3'}" in out
    assert "Posted a render job through the API: 12 images in 3 chunks × 2 replicas" in out
    assert "The worker split the job into 3 tasks" in out
    assert "Enrolled and started 2 local nodes" in out
    assert "3/3 chunks verified, 0 running, 6 replicas accepted" in out
    assert "The job is completed: every chunk's replicas agreed" in out
    # Money: funded on the local chain with 2 HWC to spare, 6 replicas × 1 HWC paid, 2.5 % fee, rest refunded.
    assert "with 8.15 HWC from" in out
    assert "Paid 6 replicas on chain in" in out
    assert out.count(": credited 3 HWC") == 2
    assert ": 0.15 HWC in fees" in out
    assert ": refunded 2 HWC" in out
    assert "The ledger matches the chain (payments reconcile)." in out
    assert "stopped Anvil" in out
    # The dataset was downloaded through the API and is a COCO dataset of the 12 images.
    assert "Dataset: 12 images" in out
    with zipfile.ZipFile(tmp_path / "demo-dataset.zip") as archive:
        coco = json.loads(archive.read("annotations.json"))
    assert len(coco["images"]) == 12
    assert coco["annotations"]
    assert (tmp_path / "demo-preview.png").stat().st_size > 0
    # Then a train job on that dataset: rounds on both nodes, a model better than the untrained one, paid.
    assert "Posted a train job on that dataset: smallcnn" in out
    untrained = float(out.split("untrained accuracy ")[1].split("%")[0])
    assert "round 1: 2 updates accepted" in out
    final = float(out.split("held-out accuracy ")[-1].split("%")[0])
    assert final >= untrained + 25, (untrained, final)
    assert out.count("The ledger matches the chain (payments reconcile).") == 2
    assert "Summary: 12 images rendered, held-out accuracy " in out
    with zipfile.ZipFile(tmp_path / "demo-model.zip") as archive:
        assert set(archive.namelist()) == {"model.safetensors", "model_card.json"}
    # A second run in the same directory reuses the chain and its contracts and replaces the old demo nodes.
    escrow = next(line for line in out.splitlines() if line.startswith("Chain:"))
    again = subprocess.run(
        [sys.executable, "manage.py", "demo", "--headless", "--no-train", "--port", str(_free_port()), "--timeout",
         "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert escrow in again.stdout
    assert "The ledger matches the chain (payments reconcile)." in again.stdout
    assert f"Dashboard    http://127.0.0.1:{port}/" in out
    assert "Log in as    demo-poster / hashwork-demo" in out
    assert "stopped agent-1 (exit code 0)" in out
    assert "stopped agent-2 (exit code 0)" in out
    assert "stopped beat (exit code 0)" in out
    assert "stopped settlement (exit code 0)" in out
    assert "stopped worker (exit code 0)" in out
    assert "stopped web (exit code 0)" in out
    assert "stopped the embedded Redis" in out
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
