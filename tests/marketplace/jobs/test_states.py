"""The job, task and assignment state machines: every legal move works, every illegal one is refused."""

from __future__ import annotations

import itertools

import pytest

from marketplace.core.exceptions import Conflict
from marketplace.jobs import dispatch, services
from marketplace.jobs.models import (
    ASSIGNMENT_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    TASK_TRANSITIONS,
    Assignment,
    AssignmentState,
    Job,
    JobState,
    Task,
    TaskState,
)
from marketplace.jobs.transitions import task_transition
from tests.factories import AssignmentFactory, JobFactory, TaskFactory

pytestmark = pytest.mark.django_db

JOB_PAIRS = list(itertools.product(JobState.values, JobState.values))


@pytest.mark.parametrize(("source", "target"), JOB_PAIRS)
def test_a_job_moves_only_along_the_allowed_transitions(source: str, target: str) -> None:
    job = JobFactory(state=source)
    allowed = source in JOB_TRANSITIONS.get(target, frozenset())
    if allowed:
        services.job_transition(job_id=job.id, to=target)
        assert Job.objects.get(id=job.id).state == target
    else:
        with pytest.raises(Conflict) as refused:
            services.job_transition(job_id=job.id, to=target)
        assert source in refused.value.message
        assert Job.objects.get(id=job.id).state == source


def test_terminal_states_have_no_way_out() -> None:
    for target, sources in JOB_TRANSITIONS.items():
        assert not (sources & JOB_TERMINAL), f"{target} can be reached from a terminal state"


def test_a_finished_job_records_when_it_finished() -> None:
    job = JobFactory(state=JobState.RUNNING)
    services.job_transition(job_id=job.id, to=JobState.COMPLETED)
    job.refresh_from_db()
    assert job.finished_at is not None


def test_of_two_racing_transitions_only_one_wins() -> None:
    job = JobFactory(state=JobState.RUNNING)
    services.job_transition(job_id=job.id, to=JobState.COMPLETED)
    with pytest.raises(Conflict):
        services.job_transition(job_id=job.id, to=JobState.CANCELLED)
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED


@pytest.mark.parametrize(("source", "target"), list(itertools.product(AssignmentState.values, AssignmentState.values)))
def test_an_assignment_moves_only_along_the_allowed_transitions(source: str, target: str) -> None:
    assignment = AssignmentFactory(state=source)
    moved = (
        dispatch.assignment_end(assignment_id=assignment.id, to=target) if target in ASSIGNMENT_TRANSITIONS else False
    )
    expected = source in ASSIGNMENT_TRANSITIONS.get(target, frozenset())
    assert moved is expected
    assert Assignment.objects.get(id=assignment.id).state == (target if expected else source)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(TaskState.values, TaskState.values)))
def test_a_task_moves_only_along_the_allowed_transitions(source: str, target: str) -> None:
    task = TaskFactory(state=source)
    moved = task_transition(task_id=task.id, to=target) if target in TASK_TRANSITIONS else False
    expected = source in TASK_TRANSITIONS.get(target, frozenset())
    assert moved is expected
    assert Task.objects.get(id=task.id).state == (target if expected else source)
