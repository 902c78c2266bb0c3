"""The raw-Celery baseline of bench/dispatch.py: one no-op task, nothing else."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.broker_transport_options = {"global_keyprefix": os.environ["BENCH_PREFIX"]}
app.conf.result_backend_transport_options = {"global_keyprefix": os.environ["BENCH_PREFIX"]}
app.conf.worker_prefetch_multiplier = 4


@app.task(name="bench.noop")
def noop() -> None:
    return None
