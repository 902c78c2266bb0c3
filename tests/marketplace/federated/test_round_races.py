"""Closing a round judges its updates with no lock held, then applies the verdict only if the round is still open
and its job still running. These tests land the racing event (a cancel, a late upload, a second close) in the
middle of the judging, through the one seam there is: the judge itself, wrapped so the event happens after it
has read the round's updates and before the verdict is applied."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from marketplace.federated import rounds
from marketplace.federated.models import RoundState, TrainRound
from marketplace.jobs import dispatch, services
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task
from marketplace.payments.models import Payout
from tests.conftest import Persona
from tests.marketplace.federated.test_train_rounds import _by_node, _nodes, _run_node, _started, _verify, dataset

pytestmark = pytest.mark.django_db
__all__ = ["dataset"]  # the module-scoped fixture, shared with test_train_rounds


def _during_judging(monkeypatch: pytest.MonkeyPatch, event: Callable[[], None]) -> None:
    judge = rounds._judge

    def judged_then(**kwargs: Any) -> Any:
        outcome = judge(**kwargs)
        event()
        return outcome

    monkeypatch.setattr(rounds, "_judge", judged_then)


def _submitted(poster: Persona, operator: Persona, dataset: bytes, tmp: Path, **spec: Any) -> tuple[Job, list[Any]]:
    job = _started(poster, dataset, **spec)
    nodes = _nodes(operator, spec.get("participants", 2))
    leased = dispatch.schedule()
    return job, list(_by_node(leased, nodes).items())


def _deliver(owners: list[Any], tmp: Path) -> None:
    for assignment_id, node in owners:
        assert _run_node(node, assignment_id, tmp).status_code == 201
        _verify(assignment_id)


def test_a_job_cancelled_while_its_round_is_judged_pays_nothing_of_that_round(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, owners = _submitted(poster, operator, dataset, tmp_path, rounds=2)
    _deliver(owners, tmp_path)
    _during_judging(monkeypatch, lambda: services.job_cancel(job_id=job.id, poster=poster.user))
    assert rounds.round_close(job_id=job.id, index=0, why="quorum") == "job cancelled"
    assert not Payout.objects.filter(job=job).exists()
    assert not Assignment.objects.filter(task__job=job, state=AssignmentState.ACCEPTED).exists()
    closed = TrainRound.objects.get(job=job, index=0)
    assert (closed.state, closed.close_reason) == (RoundState.CLOSED, "job cancelled")
    assert not TrainRound.objects.filter(job=job, index=1).exists()


def test_an_update_that_arrives_while_the_round_is_judged_is_refused_as_late_and_not_paid(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, owners = _submitted(poster, operator, dataset, tmp_path, rounds=1, participants=3)
    (late_id, late_node), on_time = owners[0], owners[1:]
    _deliver(on_time, tmp_path)
    _during_judging(monkeypatch, lambda: _run_node(late_node, late_id, tmp_path))
    assert rounds.round_close(job_id=job.id, index=0, why="quorum") == "finished"
    late = Assignment.objects.get(id=late_id)
    assert late.state == AssignmentState.REJECTED
    assert "arrived after round 0 closed" in late.state_reason
    assert not Payout.objects.filter(assignment_id=late_id).exists()
    assert Payout.objects.filter(job=job).count() == 2
    assert Job.objects.get(id=job.id).state == JobState.COMPLETED


def test_two_closes_of_one_round_apply_its_verdict_once(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, owners = _submitted(poster, operator, dataset, tmp_path, rounds=2)
    _deliver(owners, tmp_path)
    judge = rounds._judge
    results: list[str] = []

    def other_close() -> None:
        monkeypatch.setattr(rounds, "_judge", judge)  # the second close runs unhindered
        results.append(rounds.round_close(job_id=job.id, index=0, why="deadline"))

    _during_judging(monkeypatch, other_close)
    assert rounds.round_close(job_id=job.id, index=0, why="quorum") == "already closed"
    assert results == ["next round"]
    assert Payout.objects.filter(job=job).count() == 2
    assert TrainRound.objects.filter(job=job, index=1).count() == 1
    assert Task.objects.filter(job=job, group=1).count() == 2
    assert TrainRound.objects.get(job=job, index=0).close_reason == "deadline"
