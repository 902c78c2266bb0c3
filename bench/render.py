"""Render throughput: images/s rendering a spec directly (`python -m synthetic render`, the baseline) against the
same spec as a render job through the marketplace with 1 and 2 real agents, in one run; the marketplace's
overhead, and the peak memory of a render child process.

    .venv/bin/python bench/render.py [--images 8] [--chunk 4] [--samples 16 64] [--resolution 256]

Uses DATABASE_URL/REDIS_URL when set (as `make test` does), else SQLite and the embedded Redis. Replication is 1
so that both paths render every image once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")


def _spec(images: int, samples: int, resolution: int) -> dict[str, Any]:
    from tests.marketplace.jobs.test_render_kind import render_spec

    spec = render_spec(images=images, output={"resolution": [resolution, resolution], "samples": samples})
    spec.pop("chunk_size")
    return spec


def direct(spec: dict[str, Any], chunk: int) -> tuple[float, int]:
    """Images/s rendering every chunk with the CLI, one after the other; and the largest child's peak RSS (MiB)."""
    with tempfile.TemporaryDirectory(prefix="hw-render-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        started = time.perf_counter()
        for start in range(0, spec["images"], chunk):
            count = min(chunk, spec["images"] - start)
            subprocess.run(
                [sys.executable, "-m", "synthetic", "render", str(spec_file), "--out", f"{tmp}/c{start}",
                 "--start", str(start), "--count", str(count)],
                check=True, capture_output=True, cwd=ROOT,
            )  # fmt: skip
        seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return spec["images"] / seconds, peak_mib


def marketplace(spec: dict[str, Any], chunk: int, agents: int) -> float:
    """Images/s from posting the render job to its completion, with `agents` real agents (1 slot each)."""
    from tests.e2e.stack import Stack
    from tests.helpers import wait_for

    with tempfile.TemporaryDirectory(prefix="hw-render-mp-") as tmp:
        stack = Stack(Path(tmp), HASHWORK_LEASE_SECONDS="900", HASHWORK_START_WINDOW_SECONDS="900").start()
        try:
            for n in range(agents):
                stack.agent(f"render-{n}")
            body = {"kind": "render", "spec": {**spec, "chunk_size": chunk}, "price_per_replica": "1",
                    "replication": 1}  # fmt: skip
            started = time.perf_counter()
            reply = stack.poster.post(f"{stack.url}/api/jobs/", json=body, timeout=30)
            job_id = reply.json()["id"]
            stack.manage("job", "fund-dev", job_id)
            stack.wait_job(job_id, timeout=3600)
            seconds = time.perf_counter() - started
            wait_for(lambda: stack.job(job_id)["output_url"] is not None, timeout=300, what="the merged dataset")
            return float(spec["images"]) / seconds
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args()

    import django

    django.setup()
    import logging

    from django.conf import settings

    from marketplace.core import embedded_redis

    logging.getLogger().setLevel(logging.WARNING)
    started_redis = None
    if not settings.REDIS_URL:
        started_redis = Path(tempfile.mkdtemp(prefix="hw-bench-redis-"))
        settings.REDIS_URL = embedded_redis.start(started_redis)[0].url
    rows = []
    peak = 0
    try:
        for samples in args.samples:
            spec = _spec(args.images, samples, args.resolution)
            base, peak_mib = direct(spec, args.chunk)
            peak = max(peak, peak_mib)
            one = marketplace(spec, args.chunk, 1)
            two = marketplace(spec, args.chunk, 2)
            rows.append((samples, base, one, two))
    finally:
        if started_redis is not None:
            embedded_redis.stop(started_redis)
    print(f"{args.images} images at {args.resolution}², chunks of {args.chunk}, replication 1, {os.cpu_count()} CPUs")
    print(f"{'samples':>8}{'direct img/s':>14}{'1 agent':>10}{'2 agents':>10}{'overhead (1)':>14}{'2 vs 1':>8}")
    for samples, base, one, two in rows:
        print(f"{samples:>8}{base:>14.3f}{one:>10.3f}{two:>10.3f}{(base / one - 1) * 100:>13.1f}%{two / one:>8.2f}")
    print(f"peak memory of a render child process: {peak} MiB")


if __name__ == "__main__":
    main()
