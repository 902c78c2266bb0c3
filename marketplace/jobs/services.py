"""Writes for jobs, tasks, assignments and results. Every state change is a conditional UPDATE."""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from marketplace.core.fields import UINT256_MAX
from marketplace.jobs import dispatch, kinds, selectors, signing
from marketplace.jobs.models import (
    ASSIGNMENT_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    Assignment,
    AssignmentState,
    Job,
    JobAsset,
    JobOutput,
    JobState,
    Result,
    Task,
)
from marketplace.nodes.models import Node


def schedule_request() -> None:
    """Ask for a scheduler run soon (after commit); many requests in a burst collapse into one run."""
    from marketplace.jobs.tasks import schedule_request as request

    request()


logger = logging.getLogger(__name__)

MAX_REPLICATION = 7
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")


def quote_compute(*, price_per_replica: int, task_count: int, replication: int) -> int:
    """What a job costs before fees: price × tasks × replication, in integer base units."""
    return price_per_replica * task_count * replication


def job_create(
    *,
    poster: AbstractBaseUser,
    kind: str,
    spec: Any,
    price_per_replica: int,
    replication: int,
    deadline: datetime | None = None,
) -> Job:
    """Validate a job posting and create it as a draft with its quote. Invalid input writes nothing."""
    job_kind = kinds.get(kind)
    parsed = kinds.parse_spec(job_kind, spec)
    fields: dict[str, list[str]] = {}
    if isinstance(price_per_replica, bool) or not isinstance(price_per_replica, int) or price_per_replica < 1:
        fields["price_per_replica"] = ["Must be a positive whole number of token base units."]
    most = min(MAX_REPLICATION, job_kind.max_replication)
    if isinstance(replication, bool) or not isinstance(replication, int) or not 1 <= replication <= most:
        fields["replication"] = [
            f"Must be between 1 and {most}."
            if most > 1
            else f"Must be 1: {job_kind.name} jobs are verified without replicas."
        ]
    now = timezone.now()
    hours = settings.HASHWORK
    if deadline is None:
        deadline = now + timedelta(hours=hours["JOB_DEFAULT_DEADLINE_HOURS"])
    elif deadline <= now:
        fields["deadline"] = ["Must be in the future."]
    elif deadline > now + timedelta(hours=hours["JOB_MAX_DEADLINE_HOURS"]):
        fields["deadline"] = [f"Must be within {hours['JOB_MAX_DEADLINE_HOURS'] // 24} days."]
    if fields:
        raise ValidationFailed(fields)
    if job_kind.check is not None:
        job_kind.check(parsed, poster)
    task_count = job_kind.task_count(parsed)
    quote = quote_compute(price_per_replica=price_per_replica, task_count=task_count, replication=replication)
    if quote > UINT256_MAX:
        raise ValidationFailed({"price_per_replica": ["price × tasks × replication must fit in 256 bits."]})
    job = Job.objects.create(
        poster=poster,
        kind=job_kind.name,
        spec=parsed.model_dump(mode="json"),
        price_per_replica=price_per_replica,
        replication=replication,
        task_count=task_count,
        quote=quote,
        deadline=deadline,
    )
    logger.info("job %s created by %s: %s, %d tasks, quote %d", job.id, poster.pk, kind, task_count, quote)
    return job


def job_transition(*, job_id: UUID, to: str, reason: str = "") -> None:
    """Move a job to state `to` if its current state allows it; Conflict otherwise."""
    sources = JOB_TRANSITIONS.get(to, frozenset())
    now = timezone.now()
    updates: dict[str, Any] = {"state": to, "updated_at": now}
    if reason:
        updates["state_reason"] = reason
    if to == JobState.FUNDED:
        updates["funded_at"] = now
    if to in JOB_TERMINAL:
        updates["finished_at"] = now
    if Job.objects.filter(id=job_id, state__in=sources).update(**updates) == 1:
        logger.info("job %s → %s %s", job_id, to, reason)
        return
    current = Job.objects.filter(id=job_id).values_list("state", flat=True).first()
    if current is None:
        raise NotFound("No such job.")
    raise Conflict(
        f"A {current} job cannot become {to}.",
        {"state": current, "allowed_from": sorted(str(s) for s in sources)},
    )


def assignment_transition(*, assignment_id: UUID, to: str, reason: str = "", **extra: Any) -> bool:
    """Move an assignment to `to` if its state allows it; returns False if someone else moved it first."""
    sources = ASSIGNMENT_TRANSITIONS[to]
    updates: dict[str, Any] = {"state": to, **extra}
    if reason:
        updates["state_reason"] = reason
    return Assignment.objects.filter(id=assignment_id, state__in=sources).update(**updates) == 1


def job_missing_assets(*, job: Job) -> list[str]:
    """The files the job's spec needs that its poster has not uploaded yet."""
    kind = kinds.get(job.kind)
    if kind.required_assets is None:
        return []
    have = set(job.assets.values_list("path", flat=True))
    return [path for path in kind.required_assets(job.spec) if path not in have]


def job_mark_funded(*, job_id: UUID, reason: str) -> None:
    """A draft job's funding is in place (seen on chain, or the dev service): fund it and split it into tasks.
    A job still missing uploaded assets stays a draft, with the reason, until they are there."""
    job = Job.objects.get(id=job_id)
    missing = job_missing_assets(job=job)
    if missing:
        # Outside any transaction: the reason must stay even though the funding is refused.
        Job.objects.filter(id=job_id, state=JobState.DRAFT).update(
            state_reason=f"waiting for assets: {', '.join(missing)}"
        )
        raise Conflict(f"The job needs its assets uploaded first: {', '.join(missing)}.", {"missing": missing})
    with transaction.atomic():
        job_transition(job_id=job_id, to=JobState.FUNDED, reason=reason)
        from marketplace.jobs.tasks import job_split_task

        transaction.on_commit(lambda: job_split_task.delay(str(job_id)))


def job_fund_dev(*, job_id: UUID, actor: AbstractBaseUser) -> None:
    """Mark a job funded without a chain (dev installs and staff only), then split it into tasks."""
    if not (settings.HASHWORK["DEV_FUNDING"] or getattr(actor, "is_staff", False)):
        raise PermissionDenied("Dev funding is off here (HASHWORK_DEV_FUNDING=false); fund the job on chain.")
    job_mark_funded(job_id=job_id, reason="funded by dev service")


@transaction.atomic
def job_split(*, job_id: UUID) -> int:
    """Create a funded job's tasks and start it. Idempotent: a job already split is left alone."""
    job = Job.objects.select_for_update().filter(id=job_id).first()
    if job is None:
        logger.warning("job %s vanished before it was split", job_id)
        return 0
    if job.state != JobState.FUNDED or job.tasks.exists():
        logger.info("job %s not split: state %s", job_id, job.state)
        return 0
    kind = kinds.get(job.kind)
    if kind.start is not None:
        try:
            plans = kind.start(job)
        except ValueError as exc:
            # The job cannot run as posted (its dataset is unreadable, say): it fails, and its funds go back.
            job_transition(job_id=job.id, to=JobState.FAILED, reason=f"could not start: {exc}")
            return 0
    else:
        plans = kind.split(kinds.parse_spec(kind, job.spec))
    Task.objects.bulk_create(
        Task(
            job=job,
            index=i,
            payload=plan.payload,
            requirements=plan.requirements,
            replicas_wanted=job.replication,
            group=plan.group,
        )
        for i, plan in enumerate(plans)
    )
    job_transition(job_id=job.id, to=JobState.RUNNING, reason=f"split into {len(plans)} tasks")
    transaction.on_commit(schedule_request)
    return len(plans)


@transaction.atomic
def job_cancel(*, job_id: UUID, poster: AbstractBaseUser) -> Job:
    """Cancel the poster's job: pending work is revoked; accepted work stays paid."""
    job = Job.objects.select_for_update().filter(id=job_id, poster=poster).first()
    if job is None:
        raise NotFound("No such job.")
    job_transition(job_id=job.id, to=JobState.CANCELLED, reason="cancelled by the poster")
    dispatch.work_stop(job_id=job.id, reason="job cancelled")
    job.refresh_from_db()
    return job


def jobs_expire(*, now: datetime | None = None) -> int:
    """Expire every unfinished job past its deadline; returns how many."""
    now = now or timezone.now()
    expired = 0
    due = Job.objects.filter(deadline__lt=now, state__in=JOB_TRANSITIONS[JobState.EXPIRED]).values_list("id", flat=True)
    for job_id in list(due):
        with transaction.atomic():
            if Job.objects.filter(id=job_id, state__in=JOB_TRANSITIONS[JobState.EXPIRED]).update(
                state=JobState.EXPIRED, state_reason="deadline passed", finished_at=now, updated_at=now
            ):
                dispatch.work_stop(job_id=job_id, reason="job expired")
                expired += 1
    return expired


def assignment_start(*, assignment_id: UUID, node: Node) -> Assignment:
    """The node starts work on a leased assignment; Conflict if it was cancelled, expired or started."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    now = timezone.now()
    started = Assignment.objects.filter(
        id=assignment.id,
        node=node,
        state=AssignmentState.LEASED,
        start_by__gte=now,
        lease_expires_at__gte=now,
    ).update(state=AssignmentState.RUNNING, started_at=now)
    assignment.refresh_from_db()
    if not started:
        state = assignment.state
        why = "its start window has passed" if state == AssignmentState.LEASED else f"it is {state}"
        raise Conflict(f"This assignment cannot start: {why}.", {"state": state})
    return assignment


def result_submit(
    *,
    assignment_id: UUID,
    node: Node,
    artifact: UploadedFile,
    sha256: str,
    signature: str,
    metrics: dict[str, Any],
) -> Result:
    """Store a node's result for its running assignment. Checks that need no key come first, so bad input
    is refused before anything is written; a repeated identical upload returns the first result."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    fields: dict[str, list[str]] = {}
    sha256 = sha256.strip().lower()
    if not SHA256_RE.match(sha256):
        fields["sha256"] = ["Must be 64 lower-case hex digits."]
    if not SIGNATURE_RE.match(signature.strip()):
        fields["signature"] = ["Must be a 0x-prefixed 65-byte hex signature."]
    kind_name = assignment.task.job.kind
    limit = settings.HASHWORK["ARTIFACT_LIMITS"].get(kind_name) or kinds.get(kind_name).artifact_max_bytes
    if artifact.size is None or artifact.size > limit:
        fields["artifact"] = [f"Is {artifact.size} bytes; {assignment.task.job.kind} results are at most {limit}."]
    if fields:
        raise ValidationFailed(fields)
    digest = hashlib.sha256()
    for chunk in artifact.chunks():
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise ValidationFailed({"sha256": ["Does not match the uploaded artifact's bytes."]})
    signer = signing.result_signer(assignment_id=assignment.id, sha256=sha256, signature=signature.strip())
    if signer is None or signer.lower() != node.wallet_address.lower():
        raise ValidationFailed(
            {"signature": ["Is not the node wallet's EIP-191 signature of this assignment id and sha256."]}
        )
    existing = Result.objects.filter(assignment=assignment).first()
    if existing is not None:
        if existing.sha256 == sha256:
            return existing
        raise Conflict("A different result was already submitted for this assignment.")
    now = timezone.now()
    if assignment.state != AssignmentState.RUNNING:
        raise Conflict(f"This assignment is {assignment.state}; results are taken only while it runs.")
    if assignment.lease_expires_at < now:
        raise Conflict("The lease on this assignment has expired; the result is not accepted.")
    artifact.seek(0)
    with transaction.atomic():
        if not dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.SUBMITTED, submitted_at=now):
            raise Conflict("This assignment changed state while the result was uploaded.")
        result = Result(assignment=assignment, sha256=sha256, size=artifact.size, metrics=metrics, signature=signature)
        result.artifact.save(f"{assignment.id}.bin", artifact, save=False)
        result.save()
        task_id = assignment.task_id
        transaction.on_commit(lambda: _verify_request(task_id))
        transaction.on_commit(schedule_request)
    logger.info("result %s stored for assignment %s of node %s", result.id, assignment.id, node.id)
    return result


def _verify_request(task_id: UUID) -> None:
    from marketplace.jobs.tasks import task_verify_task

    task_verify_task.delay(str(task_id))


def assignment_release(*, assignment_id: UUID, node: Node) -> Assignment:
    """The node hands one assignment back (paused, shutting down): it is re-leased at once, no penalty."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    if not dispatch.assignment_end(
        assignment_id=assignment.id, to=AssignmentState.RELEASED, reason="handed back by the node"
    ):
        assignment.refresh_from_db()
        raise Conflict(f"This assignment is {assignment.state}; only open assignments can be handed back.")
    transaction.on_commit(schedule_request)
    assignment.refresh_from_db()
    return assignment


def assignment_fail(*, assignment_id: UUID, node: Node, reason: str) -> Assignment:
    """The node's runner failed on this assignment: an attempt lost, and a mark against the node on this job."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    reason = reason.strip()[:500] or "the node reported a failure"
    if not dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.FAILED, reason=reason):
        assignment.refresh_from_db()
        raise Conflict(f"This assignment is {assignment.state}; only open assignments can fail.")
    transaction.on_commit(schedule_request)
    assignment.refresh_from_db()
    return assignment


PREVIEWS = 3


def _previews(*, job: Job, archive: Path, count: int) -> list[str]:
    """Draw the first images of a merged dataset with their masks, boxes and category names (for the dashboard);
    returns the storage names of the PNGs."""
    from django.core.files.storage import default_storage

    from synthetic.show import show

    names: list[str] = []
    for position in range(count):
        png = archive.with_name(f"preview-{position}.png")
        try:
            show(archive, position, png)
        except IndexError:
            break
        with png.open("rb") as handle:
            names.append(default_storage.save(f"outputs/{job.id}/preview-{position}.png", File(handle)))
    return names


def job_output_build(*, job_id: UUID) -> JobOutput | None:
    """Merge a completed render job's accepted chunks (one replica per task) into its dataset. Idempotent."""
    from synthetic import merge

    job = Job.objects.filter(id=job_id, state=JobState.COMPLETED).first()
    if job is None or JobOutput.objects.filter(job=job).exists():
        return None
    kind = kinds.get(job.kind)
    chunks = []
    for task in job.tasks.order_by("index"):
        result = (
            Result.objects.filter(assignment__task=task, assignment__state=AssignmentState.ACCEPTED)
            .order_by("created_at")
            .first()
        )
        if result is None:
            raise Conflict(f"Task {task.index} of job {job_id} has no accepted result to merge.")
        chunks.append(kind.result_value(result))
    with tempfile.TemporaryDirectory(prefix="hw-merge-") as tmp:
        archive = Path(tmp) / "dataset.zip"
        summary = merge(chunks, archive)
        summary["previews"] = _previews(job=job, archive=archive, count=PREVIEWS)
        output = JobOutput(job=job, size=archive.stat().st_size, summary=summary)
        with archive.open("rb") as handle:
            output.file.save("dataset.zip", File(handle), save=False)
        try:
            with transaction.atomic():
                output.save()
        except IntegrityError:
            return JobOutput.objects.get(job=job)
    logger.info("job %s: dataset merged (%s)", job_id, summary)
    return output


def job_asset_upload(*, job_id: UUID, poster: AbstractBaseUser, path: str, file: UploadedFile) -> JobAsset:
    """Attach a file the job's spec refers to (replacing an earlier upload of the same path); drafts only."""
    job = Job.objects.filter(id=job_id, poster=poster).first()
    if job is None:
        raise NotFound("No such job.")
    if job.state != JobState.DRAFT:
        raise Conflict(f"The job is {job.state}; assets can be uploaded only while it is a draft.")
    kind = kinds.get(job.kind)
    required = kind.required_assets(job.spec) if kind.required_assets else []
    if path not in required:
        wanted = ", ".join(required) or "none"
        raise ValidationFailed({"path": [f"The spec does not use {path!r}; it uses: {wanted}."]})
    if not path.lower().endswith(kind.asset_suffixes):
        raise ValidationFailed({"file": [f"Must be one of: {', '.join(kind.asset_suffixes)}."]})
    if file.size is None or file.size > kind.asset_max_bytes:
        raise ValidationFailed({"file": [f"Is {file.size} bytes; assets are at most {kind.asset_max_bytes}."]})
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    file.seek(0)
    with transaction.atomic():
        JobAsset.objects.filter(job=job, path=path).delete()
        asset = JobAsset(job=job, path=path, size=file.size, sha256=digest.hexdigest())
        asset.file.save(PurePosixPath(path).name, file, save=False)
        asset.save()
    logger.info("job %s: asset %s uploaded (%d bytes)", job.id, path, file.size)
    return asset
