"""Dispatch throughput: the marketplace path (post → lease → agent → upload → verify → accepted) against a raw
Celery round trip of a no-op task, measured in the same run against the same Redis.

    .venv/bin/python bench/dispatch.py [--tasks 200] [--raw-tasks 2000] [--repeats 3]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="benchmark tasks per marketplace run")
    parser.add_argument("--raw-tasks", type=int, default=2000, help="no-op tasks per raw Celery run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median is reported")
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
        one = [marketplace_path(args.tasks, 1) for _ in range(args.repeats)]
        two = [marketplace_path(args.tasks, 2) for _ in range(args.repeats)]
    finally:
        if started_redis is not None:
            embedded_redis.stop(started_redis)
    raw_m, one_m, two_m = (statistics.median(x) for x in (raw, one, two))
    print(f"{'path':<48}{'tasks/s':>10}{'vs raw':>10}")
    print(f"{'raw Celery round trip (no-op, 2 processes)':<48}{raw_m:>10.1f}{1:>10.3f}")
    print(f"{'marketplace, 1 agent (2 slots), accepted':<48}{one_m:>10.1f}{one_m / raw_m:>10.3f}")
    print(f"{'marketplace, 2 agents (2 slots each), accepted':<48}{two_m:>10.1f}{two_m / raw_m:>10.3f}")
    print(f"runs: raw {[round(x, 1) for x in raw]}, 1 agent {[round(x, 1) for x in one]}, "
          f"2 agents {[round(x, 1) for x in two]}")  # fmt: skip


if __name__ == "__main__":
    main()
