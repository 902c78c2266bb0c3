"""Render throughput: images/s rendering a spec directly (`python -m synthetic render`, the baseline) against the
same spec as a render job through the marketplace with 1 and 2 real agents, in one run; the marketplace's
overhead, and the peak memory of a render child process.

    .venv/bin/python bench/render.py [--images 8] [--chunk 4] [--samples 16 64] [--resolution 256] \\
        [--agents 1 2] [--repeats 1] [--timeline]

Uses DATABASE_URL/REDIS_URL when set (as `make test` does), else SQLite and the embedded Redis. Replication is 1
so that both paths render every image once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

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


class Run(NamedTuple):
    """One job through the marketplace: images/s from posting it (the dev-funding CLI, a Django start, included)
    and from the marketplace marking it funded to marking it completed (both read from its database)."""

    posted: float
    funded: float


def marketplace(spec: dict[str, Any], chunk: int, agents: int, timeline: bool = False) -> Run:
    """One render job with `agents` real agents (1 slot each), posted once they all consume their queues (a
    network's agents run before jobs arrive: their start-up is not the job's); with `timeline`, print where its
    wall time went (from the stack's database and the agents' logs)."""
    from tests.e2e.stack import Stack
    from tests.helpers import wait_for

    with tempfile.TemporaryDirectory(prefix="hw-render-mp-") as tmp:
        stack = Stack(Path(tmp), HASHWORK_LEASE_SECONDS="900", HASHWORK_START_WINDOW_SECONDS="900").start()
        try:
            for n in range(agents):
                stack.agent(f"render-{n}")
            for agent in stack.agents:
                wait_for(lambda a=agent: _ready(a.me()), timeout=300, what=f"agent {agent.name} to consume")
            body = {"kind": "render", "spec": {**spec, "chunk_size": chunk}, "price_per_replica": "1",
                    "replication": 1}  # fmt: skip
            started = time.perf_counter()
            started_at = time.time()
            reply = stack.poster.post(f"{stack.url}/api/jobs/", json=body, timeout=30)
            job_id = reply.json()["id"]
            stack.manage("job", "fund-dev", job_id)
            stack.wait_job(job_id, timeout=3600)
            seconds = time.perf_counter() - started
            wait_for(lambda: stack.job(job_id)["output_url"] is not None, timeout=300, what="the merged dataset")
            inside = _funded_to_completed(stack, job_id)
            if timeline:
                _timeline(stack, job_id, started_at, seconds)
            return Run(posted=spec["images"] / seconds, funded=spec["images"] / inside if inside else math.nan)
        finally:
            stack.stop()


def _ready(me: dict[str, Any]) -> bool:
    return bool(me.get("is_online") and me.get("broker_ok"))


def _funded_to_completed(stack: Any, job_id: str) -> float | None:
    """Seconds from funded_at to finished_at of the job, by the marketplace's clock (PostgreSQL only)."""
    import psycopg

    if not stack.database:
        return None
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "select extract(epoch from finished_at - funded_at) from jobs_job where id = %s",
            (job_id,),  # type: ignore[arg-type]
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def _timeline(stack: Any, job_id: str, posted: float, seconds: float) -> None:
    """Each assignment's lease, start, submit and verdict (seconds after posting) and the agent's phases; PostgreSQL
    only (the stack's own database)."""
    import re

    import psycopg

    if not stack.database:
        print("  (timeline: PostgreSQL only)")
        return
    sql = """
        select t.index, a.id, extract(epoch from j.funded_at), extract(epoch from a.leased_at),
               extract(epoch from a.started_at), extract(epoch from a.submitted_at),
               extract(epoch from a.finished_at), r.metrics
        from jobs_assignment a join jobs_task t on t.id = a.task_id join jobs_job j on j.id = t.job_id
        left join jobs_result r on r.assignment_id = a.id where t.job_id = %s order by a.leased_at"""
    db = stack.env["DATABASE_URL"]
    with psycopg.connect(db) as conn:
        rows = conn.execute(sql, (job_id,)).fetchall()  # type: ignore[arg-type]
    phases: dict[str, str] = {}
    for agent in stack.agents:
        for line in agent.log.read_text(errors="replace").splitlines():
            found = re.search(r"assignment (\S+) submitted \(sha256 \w+; (.*)\)", line)
            if found:
                phases[found.group(1)] = found.group(2)
    print(f"  job {job_id}: funded at +{float(rows[0][2]) - posted:.2f}s, completed at +{seconds:.2f}s")
    for index, aid, _, leased, began, submitted, finished, metrics in rows:

        def at(moment: Any) -> str:
            return "-" if moment is None else f"+{float(moment) - posted:.2f}"

        rendered = (metrics or {}).get("seconds")
        print(f"  chunk {index}: leased {at(leased)} started {at(began)} submitted {at(submitted)} "
              f"verified {at(finished)} render {rendered}s; agent: {phases.get(str(aid), '?')}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2], help="agent counts to run (1 first)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path, alternating; medians shown")
    parser.add_argument("--timeline", action="store_true", help="print each chunk's timeline (PostgreSQL only)")
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
            bases: list[float] = []
            runs: dict[int, list[Run]] = {n: [] for n in args.agents}
            # Alternating, so that a load that comes and goes on a shared machine weighs on both paths alike.
            for _ in range(args.repeats):
                base, peak_mib = direct(spec, args.chunk)
                bases.append(base)
                peak = max(peak, peak_mib)
                for n in args.agents:
                    runs[n].append(marketplace(spec, args.chunk, n, args.timeline))
            rows.append((samples, bases, runs))
    finally:
        if started_redis is not None:
            embedded_redis.stop(started_redis)
    print(
        f"{args.images} images at {args.resolution}², chunks of {args.chunk}, replication 1, {os.cpu_count()} CPUs, "
        f"medians of {args.repeats}"
    )
    print(f"{'samples':>8}{'direct img/s':>14}{'agents':>7}{'posted→done':>13}{'overhead':>10}"
          f"{'funded→done':>13}{'overhead':>10}")  # fmt: skip
    for samples, bases, runs in rows:
        base = statistics.median(bases)
        for n, results in runs.items():
            posted = statistics.median(r.posted for r in results)
            funded = statistics.median(r.funded for r in results)
            print(f"{samples:>8}{base:>14.3f}{n:>7}{posted:>13.3f}{(base / posted - 1) * 100:>9.1f}%"
                  f"{funded:>13.3f}{(base / funded - 1) * 100:>9.1f}%")  # fmt: skip
        print(f"{'':>8}runs: direct {[round(b, 3) for b in bases]}, "
              + "; ".join(f"{n} agent(s) {[(round(r.posted, 3), round(r.funded, 3)) for r in rs]}"
                          for n, rs in runs.items()))  # fmt: skip
    print(f"peak memory of a render child process: {peak} MiB")


if __name__ == "__main__":
    main()
