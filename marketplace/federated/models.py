"""Train jobs run in rounds: the job's prepared data (shards for the nodes, a validation split only the
marketplace sees) and each round's global weights, verdicts and metrics."""

from __future__ import annotations

from django.db import models

from marketplace.jobs.models import Job


class TrainData(models.Model):
    """What a train job's start prepared from its dataset: files in the media storage, by name."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="train_data", primary_key=True)
    classes = models.JSONField(help_text="Category names, in label order.")
    image_size = models.PositiveSmallIntegerField()
    train_samples = models.PositiveIntegerField()
    val_samples = models.PositiveIntegerField()
    # [{"name", "sha256", "size", "samples"}], one per participant slot.
    shards = models.JSONField()
    val_name = models.CharField(max_length=255)
    # The untrained model on the validation split ({"accuracy", "loss"}): what training must beat.
    baseline = models.JSONField(default=dict)
    dataset = models.JSONField(default=dict, help_text="Lineage: where the dataset came from, its sha256.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"train data of job {self.job_id}"


class RoundState(models.TextChoices):
    OPEN = "open"
    CLOSED = "closed"


class TrainRound(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="train_rounds")
    index = models.PositiveIntegerField()
    state = models.CharField(max_length=8, choices=RoundState.choices, default=RoundState.OPEN)
    # The global weights the round starts from (safetensors, in the media storage).
    weights_name = models.CharField(max_length=255)
    weights_sha256 = models.CharField(max_length=64)
    weights_size = models.PositiveBigIntegerField()
    opened_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=64, blank=True, default="")
    # After closing: accuracy and loss of the aggregated weights on the validation split, updates accepted and
    # rejected (with reasons), bytes up and down per node, wall time.
    metrics = models.JSONField(default=dict)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="train_round_unique_index")]
        indexes = [models.Index(fields=["state", "deadline"])]

    def __str__(self) -> str:
        return f"round {self.index} of job {self.job_id} ({self.state})"
