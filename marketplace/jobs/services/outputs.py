"""Writes for the files of a job: the poster's uploaded assets and a completed render job's merged dataset."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path, PurePosixPath
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from marketplace.core.exceptions import Conflict, NotFound, ValidationFailed
from marketplace.jobs import kinds
from marketplace.jobs.models import AssignmentState, Job, JobAsset, JobOutput, JobState, Result

logger = logging.getLogger(__name__)

PREVIEWS = 3


def _previews(*, job: Job, archive: Path, count: int) -> list[str]:
    """Draw the first images of a merged dataset with their masks, boxes and category names (for the dashboard);
    returns the storage names of the PNGs."""
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


def job_results_discard(*, job: Job) -> None:
    """Free what verifying and merging a job used for all of its results (the render kind reads its chunks in place
    from their zips, so only what an older marketplace unpacked): once its output is built nothing reads it again."""
    kind = kinds.get(job.kind)
    discard = getattr(kind, "result_discard", None) if isinstance(kind, kinds.ReplicatedKind) else None
    if discard is None:
        return
    for result in Result.objects.filter(assignment__task__job=job).only("id"):
        discard(result)


def job_output_build(*, job_id: UUID) -> JobOutput | None:
    """Merge a completed render job's accepted chunks (one replica per task, read in place from their zips) into its
    dataset, then free what its results used (`job_results_discard`). Idempotent: a repeated run only frees again."""
    job = Job.objects.filter(id=job_id, state=JobState.COMPLETED).first()
    if job is None:
        return None
    if JobOutput.objects.filter(job=job).exists():
        job_results_discard(job=job)
        return None
    output = _output_build(job=job)
    job_results_discard(job=job)
    return output


def _output_build(*, job: Job) -> JobOutput:
    from synthetic import merge

    job_id = job.id
    kind = kinds.replicated(job.kind)
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
            output.file.delete(save=False)  # a concurrent merge (a duplicate delivery) won: drop this copy
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
    required = kind.required_assets(job.spec)
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
