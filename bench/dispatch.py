"""Dispatch throughput: the marketplace path (post → lease → node → upload → verify → accepted) against a raw
Celery round trip of a no-op task, measured in the same run against the same Redis; driven by real agents and by
the node simulator (bench/nodesim.py: the real protocol, results computed in-process, so it measures the
marketplace rather than the agents' runners).

    .venv/bin/python bench/dispatch.py [--tasks 200] [--raw-tasks 2000] [--repeats 3] [--skip-agents] \
        [--sim-nodes 10 20] [--sim-slots 2] [--sim-start] [--web-threads 1]

A simulator row's rate is its tasks over the server's own window, from the first lease to the last acceptance
(the assignments' timestamps), so that job posting and funding (a manage.py process) stay out of it; its wall
time from posting is printed too, with the median per-step times (lease→start, start→submitted,
submitted→accepted) that show where an assignment's time goes.

Uses DATABASE_URL/REDIS_URL when set (as `make test` does), else SQLite and the embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")


def raw_celery(tasks: int, redis_url: str) -> float:
    """Tasks/s of a no-op Celery task: publish, a 2-process worker runs it, the result comes back."""
    import redis
    from celery import Celery

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_PREFIX": prefix}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.noop_app", "worker", "--concurrency", "2",
         "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    app = Celery("bench-client", broker=redis_url, backend=redis_url)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    try:
        app.send_task("bench.noop").get(timeout=60)  # the worker is up
        started = time.perf_counter()
        results = [app.send_task("bench.noop") for _ in range(tasks)]
        for result in results:
            result.get(timeout=120)
        return tasks / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        admin = redis.Redis.from_url(redis_url)
        for key in admin.scan_iter(match=f"{prefix}*", count=1000):
            admin.delete(key)


def marketplace_path(tasks: int, agents: int) -> float:
    """Accepted tasks/s of tiny benchmark tasks through the whole marketplace with `agents` real agents."""
    from tests.e2e.stack import Stack

    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        stack = Stack(Path(tmp), HASHWORK_LEASE_SECONDS="120", HASHWORK_START_WINDOW_SECONDS="120").start()
        try:
            for n in range(agents):
                stack.agent(f"bench-{n}", slots=2)
            started = time.perf_counter()
            job_id = stack.post_job({"tasks": tasks, "matrix_size": 8, "seed": 1}, replication=1)
            stack.wait_job(job_id, timeout=1800)
            return tasks / (time.perf_counter() - started)
        finally:
            stack.stop()


STEPS_SQL = """
    SELECT a.leased_at, a.started_at, a.submitted_at, a.finished_at
    FROM jobs_assignment a JOIN jobs_task t ON t.id = a.task_id
    WHERE t.job_id = %s AND a.state = 'accepted'
"""


def simulator_path(
    tasks: int, nodes: int, slots: int, start_call: bool = False, web_threads: int = 1
) -> tuple[float, float, dict[str, float]]:
    """(verified tasks/s over the server's lease→accept window, the same over wall time from posting, median
    seconds of each step) of tiny benchmark tasks with `nodes` simulated nodes of `slots` slots."""
    from bench.nodesim import ENROLMENTS_PER_OPERATOR, Fleet
    from tests.e2e.stack import Stack

    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        # The default heartbeat interval (10 s) with the default online window (90 s); leases long enough.
        stack = Stack(
            Path(tmp),
            web_threads=web_threads,
            NODE_ONLINE_SECONDS="90",
            HASHWORK_LEASE_SECONDS="120",
            HASHWORK_START_WINDOW_SECONDS="120",
        ).start()
        try:
            operators = stack.operator_tokens_many(-(-nodes // ENROLMENTS_PER_OPERATOR))
            with Fleet(stack.url, operators, nodes=nodes, slots=slots, heartbeat_seconds=10.0, start_call=start_call):
                started = time.perf_counter()
                job_id = stack.post_job({"tasks": tasks, "matrix_size": 8, "seed": 1}, replication=1)
                stack.wait_job(job_id, timeout=1800)
                wall = tasks / (time.perf_counter() - started)
            rows = stack.sql(STEPS_SQL, job_id)
        finally:
            stack.stop()
    window = (max(r[3] for r in rows) - min(r[0] for r in rows)).total_seconds()
    steps = {
        name: statistics.median((r[b] - r[a]).total_seconds() for r in rows)
        for name, a, b in (("lease→start", 0, 1), ("start→submitted", 1, 2), ("submitted→accepted", 2, 3))
    }
    return tasks / window, wall, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="benchmark tasks per marketplace run")
    parser.add_argument("--raw-tasks", type=int, default=2000, help="no-op tasks per raw Celery run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median is reported")
    parser.add_argument("--skip-agents", action="store_true", help="leave out the (slow) real-agent rows")
    parser.add_argument(
        "--sim-nodes", type=int, nargs="*", default=[10], metavar="N",
        help="fleet sizes of the simulator rows (default 10; none: no simulator rows)",
    )  # fmt: skip
    parser.add_argument("--sim-slots", type=int, default=2, help="slots per simulated node (default 2)")
    parser.add_argument(
        "--web-threads", type=int, default=1,
        help="threads per web worker process in the simulator rows (gunicorn gthread when > 1; default 1: sync)",
    )  # fmt: skip
    parser.add_argument(
        "--sim-start", action="store_true",
        help="simulated nodes call start before their result, as the agent does (default: the result starts the "
        "lease, one request per assignment)",
    )  # fmt: skip
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from marketplace.core import embedded_redis

    started_redis = None
    if not settings.REDIS_URL:
        started_redis = Path(tempfile.mkdtemp(prefix="hw-bench-redis-"))
        server, _ = embedded_redis.start(started_redis)
        settings.REDIS_URL = server.url
    try:
        db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        redis_at = settings.REDIS_URL.split("@")[-1]
        print(f"database {db}; redis {redis_at}; {os.cpu_count()} CPUs; medians of {args.repeats}")
        raw = [raw_celery(args.raw_tasks, settings.REDIS_URL) for _ in range(args.repeats)]
        agents: dict[int, list[float]] = {}
        if not args.skip_agents:
            agents = {n: [marketplace_path(args.tasks, n) for _ in range(args.repeats)] for n in (1, 2)}
        sims = {
            n: [
                simulator_path(args.tasks, n, args.sim_slots, args.sim_start, args.web_threads)
                for _ in range(args.repeats)
            ]
            for n in args.sim_nodes
        }
    finally:
        if started_redis is not None:
            embedded_redis.stop(started_redis)
    raw_m = statistics.median(raw)
    print(f"{'path':<72}{'tasks/s':>10}{'vs raw':>10}")
    print(f"{'raw Celery round trip (no-op, 2 processes)':<72}{raw_m:>10.1f}{1:>10.3f}")
    for n, runs in agents.items():
        label = f"marketplace, {n} agent{'s' if n > 1 else ''} (2 slots{' each' if n > 1 else ''}), accepted"
        print(f"{label:<72}{statistics.median(runs):>10.1f}{statistics.median(runs) / raw_m:>10.3f}")
    for n, sim_runs in sims.items():
        rate = statistics.median(r[0] for r in sim_runs)
        calls = "start + result" if args.sim_start else "result only"
        web = f", web {args.web_threads} threads" if args.web_threads > 1 else ""
        label = f"marketplace, simulator ({n} nodes × {args.sim_slots} slots, {calls}{web}), verified"
        print(f"{label:<72}{rate:>10.1f}{rate / raw_m:>10.3f}")
    print(f"runs: raw {[round(x, 1) for x in raw]}")
    for n, runs in agents.items():
        print(f"  {n} agent(s): {[round(x, 1) for x in runs]}")
    for n, sim_runs in sims.items():
        steps = {k: statistics.median(r[2][k] for r in sim_runs) for k in sim_runs[0][2]}
        print(f"  simulator {n}×{args.sim_slots}: lease→accept window {[round(r[0], 1) for r in sim_runs]}/s, "
              f"wall from posting {[round(r[1], 1) for r in sim_runs]}/s; median step seconds: "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()))  # fmt: skip


if __name__ == "__main__":
    main()
