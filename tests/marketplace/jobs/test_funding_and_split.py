"""Dev funding and splitting a job into tasks, through a real Celery worker on the real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from marketplace.celery import app
from marketplace.core.exceptions import PermissionDenied
from marketplace.jobs import services
from marketplace.jobs.models import Job, JobState, Task
from tests.factories import JobFactory, UserFactory
from tests.helpers import wait_for


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[None]:
    """A real worker thread consuming the marketplace queues of this test run's Redis key prefix."""
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      queues=["mp.scheduler", "mp.default"]):  # fmt: skip
        yield


@pytest.mark.django_db
def test_splitting_creates_one_task_per_spec_task_and_starts_the_job() -> None:
    job = JobFactory(state=JobState.FUNDED, spec={"tasks": 4, "matrix_size": 32, "seed": 9}, task_count=4)
    assert services.job_split(job_id=job.id) == 4
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    tasks = list(Task.objects.filter(job=job).order_by("index"))
    assert [t.payload for t in tasks] == [{"matrix_size": 32, "seed": 9, "index": i} for i in range(4)]
    assert all(t.requirements["cpu_cores"] == 1 for t in tasks)


@pytest.mark.django_db
def test_splitting_twice_creates_no_more_tasks() -> None:
    job = JobFactory(state=JobState.FUNDED)
    services.job_split(job_id=job.id)
    assert services.job_split(job_id=job.id) == 0
    assert Task.objects.filter(job=job).count() == 3


@pytest.mark.django_db
def test_a_draft_job_is_not_split() -> None:
    job = JobFactory(state=JobState.DRAFT)
    assert services.job_split(job_id=job.id) == 0
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_dev_funding_is_refused_when_switched_off(settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "DEV_FUNDING": False}
    job = JobFactory()
    with pytest.raises(PermissionDenied):
        services.job_fund_dev(job_id=job.id, actor=job.poster)
    assert Job.objects.get(id=job.id).state == JobState.DRAFT


@pytest.mark.django_db
def test_staff_may_fund_with_the_dev_service_even_when_it_is_off(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "DEV_FUNDING": False}
    job = JobFactory()
    staff = UserFactory(username="staff", is_staff=True)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.job_fund_dev(job_id=job.id, actor=staff)
    assert Job.objects.get(id=job.id).state == JobState.FUNDED
    assert len(callbacks) == 1


def test_a_funded_job_is_split_by_the_marketplace_worker(celery_worker: None, dev_funding: None) -> None:
    job = JobFactory(spec={"tasks": 6, "matrix_size": 16, "seed": 1}, task_count=6)
    services.job_fund_dev(job_id=job.id, actor=job.poster)
    wait_for(lambda: Job.objects.get(id=job.id).state == JobState.RUNNING, timeout=30, what="the job split")
    assert Task.objects.filter(job=job).count() == 6
