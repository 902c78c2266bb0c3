"""Every Celery queue and task name of the marketplace, in one place."""

from __future__ import annotations

from enum import StrEnum

from kombu import Queue as KombuQueue


class Queue(StrEnum):
    DEFAULT = "mp.default"
    SCHEDULER = "mp.scheduler"
    VERIFY = "mp.verify"
    AGGREGATE = "mp.aggregate"
    SETTLEMENT = "mp.settlement"
    CHAIN = "mp.chain"


class TaskName(StrEnum):
    JOB_SPLIT = "jobs.job_split"
    JOBS_EXPIRE = "jobs.jobs_expire"
    SCHEDULE = "jobs.schedule"
    LEASES_EXPIRE = "jobs.leases_expire"
    TASK_VERIFY = "jobs.task_verify"
    CHAIN_SYNC = "payments.chain_sync"
    SETTLE = "payments.settle"
    RENDER_MERGE = "jobs.render_merge"
    ROUND_CLOSE = "federated.round_close"
    ROUNDS_DUE = "federated.rounds_due"


# Time limits (seconds) per queue, suited to its work: the scheduler's queue also splits jobs (a train job's start
# makes crops, shards and a baseline evaluation); a verify
# may unzip a 512 MiB chunk and re-render an image; an aggregate closes a training round (decode, replay, evaluate)
# or merges a dataset; settlement waits for chain receipts. The soft limit raises inside the task first.
TIME_LIMITS: dict[Queue, dict[str, int]] = {
    Queue.DEFAULT: {"time_limit": 300, "soft_time_limit": 240},
    Queue.SCHEDULER: {"time_limit": 300, "soft_time_limit": 240},
    Queue.VERIFY: {"time_limit": 900, "soft_time_limit": 840},
    Queue.AGGREGATE: {"time_limit": 1800, "soft_time_limit": 1700},
    Queue.SETTLEMENT: {"time_limit": 600, "soft_time_limit": 540},
    Queue.CHAIN: {"time_limit": 120, "soft_time_limit": 100},
}

# The queues a marketplace worker consumes (the settlement queue gets its own single worker later).
MARKETPLACE_QUEUES = (Queue.DEFAULT, Queue.SCHEDULER, Queue.VERIFY, Queue.AGGREGATE, Queue.CHAIN)

CELERY_TASK_QUEUES = tuple(KombuQueue(q.value, routing_key=q.value) for q in Queue)
CELERY_TASK_ROUTES = {
    TaskName.JOB_SPLIT.value: {"queue": Queue.SCHEDULER.value},
    TaskName.JOBS_EXPIRE.value: {"queue": Queue.SCHEDULER.value},
    TaskName.SCHEDULE.value: {"queue": Queue.SCHEDULER.value},
    TaskName.LEASES_EXPIRE.value: {"queue": Queue.SCHEDULER.value},
    TaskName.TASK_VERIFY.value: {"queue": Queue.VERIFY.value},
    TaskName.CHAIN_SYNC.value: {"queue": Queue.CHAIN.value},
    TaskName.RENDER_MERGE.value: {"queue": Queue.AGGREGATE.value},
    TaskName.ROUND_CLOSE.value: {"queue": Queue.AGGREGATE.value},
    TaskName.ROUNDS_DUE.value: {"queue": Queue.SCHEDULER.value},
    # One worker with concurrency 1 consumes this queue: it alone holds the operator key's nonce.
    TaskName.SETTLE.value: {"queue": Queue.SETTLEMENT.value},
}

# Beat: the scheduler also runs on a timer (events start it sooner), leases expire, deadlines pass.
CELERY_BEAT_SCHEDULE = {
    "schedule": {"task": TaskName.SCHEDULE.value, "schedule": 5.0},
    "leases-expire": {"task": TaskName.LEASES_EXPIRE.value, "schedule": 2.0},
    "jobs-expire": {"task": TaskName.JOBS_EXPIRE.value, "schedule": 60.0},
    "rounds-due": {"task": TaskName.ROUNDS_DUE.value, "schedule": 2.0, "options": {"expires": 10}},
    # Expiring, so a queue nobody consumes (no chain, no settlement worker) does not pile up runs.
    "chain-sync": {"task": TaskName.CHAIN_SYNC.value, "schedule": 2.0, "options": {"expires": 10}},
    "settle": {"task": TaskName.SETTLE.value, "schedule": 5.0, "options": {"expires": 10}},
}
