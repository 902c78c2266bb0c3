"""Job → Task → Assignment (one replica on one node) → Result, with their state machines in one place."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models

from marketplace.core.fields import Uint256Field


class JobState(models.TextChoices):
    DRAFT = "draft"
    FUNDED = "funded"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class TaskState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AssignmentState(models.TextChoices):
    LEASED = "leased"
    RUNNING = "running"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # The node handed the work back (shutting down, paused): re-leased at once, no mark against the node.
    RELEASED = "released"
    # The node's runner crashed or refused the payload: counts as an attempt and against the node on this job.
    FAILED = "failed"


# The allowed transitions, target ← sources. Every state change goes through these tables.
JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.FUNDED: frozenset({JobState.DRAFT}),
    JobState.RUNNING: frozenset({JobState.FUNDED}),
    JobState.COMPLETED: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.FUNDED, JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.DRAFT, JobState.FUNDED, JobState.RUNNING}),
    JobState.EXPIRED: frozenset({JobState.DRAFT, JobState.FUNDED, JobState.RUNNING}),
}
JOB_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    TaskState.RUNNING: frozenset({TaskState.PENDING}),
    TaskState.PENDING: frozenset({TaskState.RUNNING}),
    TaskState.COMPLETED: frozenset({TaskState.PENDING, TaskState.RUNNING}),
    TaskState.FAILED: frozenset({TaskState.PENDING, TaskState.RUNNING}),
    TaskState.CANCELLED: frozenset({TaskState.PENDING, TaskState.RUNNING}),
}

ASSIGNMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    AssignmentState.RUNNING: frozenset({AssignmentState.LEASED}),
    AssignmentState.SUBMITTED: frozenset({AssignmentState.RUNNING}),
    AssignmentState.ACCEPTED: frozenset({AssignmentState.SUBMITTED}),
    AssignmentState.REJECTED: frozenset({AssignmentState.SUBMITTED}),
    AssignmentState.EXPIRED: frozenset({AssignmentState.LEASED, AssignmentState.RUNNING}),
    # SUBMITTED → CANCELLED: a replica that can no longer be judged (its task completed without it, or its job was
    # cancelled with no replica to compare it with) is neither accepted nor paid, and no mark against the node.
    AssignmentState.CANCELLED: frozenset({AssignmentState.LEASED, AssignmentState.RUNNING, AssignmentState.SUBMITTED}),
    AssignmentState.RELEASED: frozenset({AssignmentState.LEASED, AssignmentState.RUNNING}),
    AssignmentState.FAILED: frozenset({AssignmentState.LEASED, AssignmentState.RUNNING}),
}
ASSIGNMENT_OPEN = frozenset({AssignmentState.LEASED, AssignmentState.RUNNING})
# Replicas with no result that a node may take again (see Assignment.Meta).
ASSIGNMENT_RETAKEABLE = (AssignmentState.EXPIRED.value, AssignmentState.RELEASED.value)
# Replicas that still count towards a task's wanted replicas.
ASSIGNMENT_LIVE = frozenset(
    {AssignmentState.LEASED, AssignmentState.RUNNING, AssignmentState.SUBMITTED, AssignmentState.ACCEPTED}
)
# Ends that cost the task an attempt (released work is not the node's fault and costs nothing).
ASSIGNMENT_ATTEMPT_LOST = frozenset({AssignmentState.EXPIRED, AssignmentState.FAILED})


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    poster = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=32)
    spec = models.JSONField()
    price_per_replica = Uint256Field(help_text="Token base units paid per accepted task replica.")
    replication = models.PositiveSmallIntegerField()
    task_count = models.PositiveIntegerField()
    quote = Uint256Field(help_text="price_per_replica × task_count × replication, in base units.")
    deadline = models.DateTimeField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.DRAFT, db_index=True)
    state_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    funded_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["poster", "-created_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(replication__gte=1), name="job_replication_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.id} ({self.state})"


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks")
    index = models.PositiveIntegerField()
    payload = models.JSONField()
    requirements = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=TaskState.choices, default=TaskState.PENDING, db_index=True)
    # Leasing claims a replica with a conditional UPDATE on these counters (live < wanted), so two schedulers
    # running at once cannot over-lease a task. Verification raises `replicas_wanted` to break a tie.
    replicas_wanted = models.PositiveSmallIntegerField(default=1)
    live_replicas = models.PositiveSmallIntegerField(default=0)
    lost_attempts = models.PositiveSmallIntegerField(default=0)
    # Adaptive replication: a trusted node's single replica, verified by a marketplace spot check instead.
    spot_check = models.BooleanField(default=False)
    # Tasks of one group (a training round) are leased to different nodes.
    group = models.PositiveIntegerField(null=True, blank=True)
    state_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="task_unique_index_per_job")]

    def __str__(self) -> str:
        return f"task {self.index} of job {self.job_id} ({self.state})"


class JobNodeBlock(models.Model):
    """Failures of one node on one job; past a threshold the node gets no more of the job's work."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="node_blocks")
    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="job_blocks")
    failures = models.PositiveSmallIntegerField(default=0)
    blocked = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "node"], name="job_node_block_unique")]

    def __str__(self) -> str:
        return f"node {self.node_id} on job {self.job_id}: {self.failures} failures"


class Assignment(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    node = models.ForeignKey("nodes.Node", on_delete=models.PROTECT, related_name="assignments")
    attempt = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(
        max_length=16, choices=AssignmentState.choices, default=AssignmentState.LEASED, db_index=True
    )
    state_reason = models.TextField(blank=True, default="")
    leased_at = models.DateTimeField(auto_now_add=True)
    start_by = models.DateTimeField(help_text="The lease expires if the node has not started by then.")
    lease_expires_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the runner reports through the agent's heartbeat while it runs (images rendered, steps trained).
    progress_done = models.PositiveIntegerField(null=True, blank=True)
    progress_total = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            # Replicas of one task must run on different nodes, or replication proves nothing. A replica that
            # expired or was handed back carries no result, so the node may take the task again (after a fault
            # that was not its own, say, or in a network with no other operator left to take it).
            models.UniqueConstraint(
                fields=["task", "node"],
                condition=~models.Q(state__in=ASSIGNMENT_RETAKEABLE),
                name="assignment_one_replica_per_node",
            ),
        ]
        indexes = [models.Index(fields=["node", "state"])]

    def __str__(self) -> str:
        return f"assignment {self.id} of task {self.task_id} on node {self.node_id} ({self.state})"

    @property
    def progress(self) -> dict[str, int] | None:
        if self.progress_total is None or self.progress_done is None:
            return None
        return {"done": self.progress_done, "total": self.progress_total}


def result_artifact_path(instance: Result, filename: str) -> str:
    assignment = instance.assignment
    return f"results/{assignment.task.job_id}/{assignment.task_id}/{assignment.id}.bin"


class Result(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="result")
    artifact = models.FileField(upload_to=result_artifact_path, max_length=255)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    metrics = models.JSONField(default=dict)
    signature = models.CharField(max_length=132, help_text="EIP-191 signature by the node's wallet, 0x-hex.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"result of assignment {self.assignment_id}"


def job_output_path(instance: JobOutput, filename: str) -> str:
    return f"outputs/{instance.job_id}/dataset.zip"


class JobOutput(models.Model):
    """What a completed job produced as one file (a render job's merged COCO dataset)."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="output")
    file = models.FileField(upload_to=job_output_path, max_length=255)
    size = models.PositiveBigIntegerField()
    summary = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"output of job {self.job_id}"


def job_asset_path(instance: JobAsset, filename: str) -> str:
    return f"assets/{instance.job_id}/{uuid.uuid4().hex}-{PurePosixPath(instance.path).name}"


class JobAsset(models.Model):
    """A file a job's spec refers to (a render job's glTF model), uploaded by its poster while it is a draft."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="assets")
    path = models.CharField(max_length=255, help_text="The path the spec uses for it, e.g. models/widget.glb.")
    file = models.FileField(upload_to=job_asset_path, max_length=255)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "path"], name="job_asset_unique_path")]

    def __str__(self) -> str:
        return f"asset {self.path} of job {self.job_id}"
