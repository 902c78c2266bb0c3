"""Every Celery queue and task name of the marketplace, in one place: which queue runs each task, the time limits
of each queue, and the beat schedule."""

from __future__ import annotations

from enum import StrEnum

from kombu import Queue as KombuQueue


class Queue(StrEnum):
    DEFAULT = "mp.default"
    SCHEDULER = "mp.scheduler"
    VERIFY = "mp.verify"
    AGGREGATE = "mp.aggregate"
    # Closing a training round (it replays sampled nodes' local steps on the CPU): its own worker pool, so that
    # scheduling and verification never wait behind a replay.
    REPLAY = "mp.replay"
    SETTLEMENT = "mp.settlement"
    CHAIN = "mp.chain"


class TaskName(StrEnum):
    JOB_SPLIT = "jobs.job_split"
    JOBS_EXPIRE = "jobs.jobs_expire"
    SCHEDULE = "jobs.schedule"
    LEASES_EXPIRE = "jobs.leases_expire"
    TASK_VERIFY = "jobs.task_verify"
    VERIFY_DRAIN = "jobs.verify_drain"
    WORK_SWEEP = "jobs.work_sweep"
    CHAIN_SYNC = "payments.chain_sync"
    SETTLE = "payments.settle"
    RENDER_MERGE = "jobs.render_merge"
    ROUND_CLOSE = "federated.round_close"
    ROUNDS_DUE = "federated.rounds_due"
    BROKER_USERS_RESTORE = "nodes.broker_users_restore"


# Time limits (seconds) per queue, suited to its work: the scheduler's queue also splits jobs (a train job's start
# makes crops, shards and a baseline evaluation); a verify may unzip a 512 MiB chunk and re-render an image; an
# aggregate merges a dataset; a replay closes a training round (decode, replay, evaluate: the spec's replay cost
# is bounded at posting, federated.spec); settlement waits for chain receipts. The soft limit raises inside the
# task first. Every queue has its limits (tests/faults/test_bounds.py), applied by each task's decorator.
TIME_LIMITS: dict[Queue, dict[str, int]] = {
    Queue.DEFAULT: {"time_limit": 300, "soft_time_limit": 240},
    Queue.SCHEDULER: {"time_limit": 300, "soft_time_limit": 240},
    Queue.VERIFY: {"time_limit": 900, "soft_time_limit": 840},
    Queue.AGGREGATE: {"time_limit": 1800, "soft_time_limit": 1700},
    Queue.REPLAY: {"time_limit": 3600, "soft_time_limit": 3300},
    Queue.SETTLEMENT: {"time_limit": 600, "soft_time_limit": 540},
    Queue.CHAIN: {"time_limit": 120, "soft_time_limit": 100},
}

# The queues the marketplace worker consumes. The replay queue has a worker of its own (concurrency 1), and the
# settlement queue its single worker.
MARKETPLACE_QUEUES = (Queue.DEFAULT, Queue.SCHEDULER, Queue.VERIFY, Queue.AGGREGATE, Queue.CHAIN)
REPLAY_QUEUES = (Queue.REPLAY,)

# The queue of every task.
TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.JOB_SPLIT: Queue.SCHEDULER,
    TaskName.JOBS_EXPIRE: Queue.SCHEDULER,
    TaskName.SCHEDULE: Queue.SCHEDULER,
    TaskName.LEASES_EXPIRE: Queue.SCHEDULER,
    TaskName.WORK_SWEEP: Queue.SCHEDULER,
    TaskName.TASK_VERIFY: Queue.VERIFY,
    TaskName.VERIFY_DRAIN: Queue.VERIFY,
    TaskName.CHAIN_SYNC: Queue.CHAIN,
    TaskName.RENDER_MERGE: Queue.AGGREGATE,
    TaskName.ROUND_CLOSE: Queue.REPLAY,
    TaskName.ROUNDS_DUE: Queue.SCHEDULER,
    TaskName.BROKER_USERS_RESTORE: Queue.SCHEDULER,
    # One worker with concurrency 1 consumes this queue: it alone holds the operator key's nonce.
    TaskName.SETTLE: Queue.SETTLEMENT,
}


def time_limits(name: TaskName) -> dict[str, int]:
    """The time limits of the queue that runs task `name` (a task decorator's keyword arguments)."""
    return TIME_LIMITS[TASK_QUEUES[name]]


CELERY_TASK_QUEUES = tuple(KombuQueue(q.value, routing_key=q.value) for q in Queue)
CELERY_TASK_ROUTES = {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()}

# Beat: the scheduler also runs on a timer (events start it sooner), leases expire, deadlines pass, and the work
# sweep re-queues what a lost message or a killed worker left undone.
CELERY_BEAT_SCHEDULE = {
    "schedule": {"task": TaskName.SCHEDULE.value, "schedule": 5.0},
    "leases-expire": {"task": TaskName.LEASES_EXPIRE.value, "schedule": 2.0},
    "jobs-expire": {"task": TaskName.JOBS_EXPIRE.value, "schedule": 60.0},
    "rounds-due": {"task": TaskName.ROUNDS_DUE.value, "schedule": 2.0, "options": {"expires": 10}},
    "work-sweep": {"task": TaskName.WORK_SWEEP.value, "schedule": 15.0, "options": {"expires": 15}},
    # Node ACL users back after a Redis restart, and a banned node's user gone even if Redis was down at the ban.
    "broker-users-restore": {"task": TaskName.BROKER_USERS_RESTORE.value, "schedule": 10.0, "options": {"expires": 10}},
    # Expiring, so a queue nobody consumes (no chain, no settlement worker) does not pile up runs.
    "chain-sync": {"task": TaskName.CHAIN_SYNC.value, "schedule": 2.0, "options": {"expires": 10}},
    "settle": {"task": TaskName.SETTLE.value, "schedule": 5.0, "options": {"expires": 10}},
}
