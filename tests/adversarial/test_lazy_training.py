"""Lazy training is not paid: attacks played through the real federated round path (real PostgreSQL, the real
train runner in-process, the agents' upload API). A node that sends a zero update, or trains ¼ of the local steps,
is rejected, never paid, blocked from the job and loses its streak; honest nodes are still paid and the round
still closes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from marketplace.federated import rounds as federated
from marketplace.federated.models import RoundState, TrainRound
from marketplace.federated.trust import replay_probability
from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment, AssignmentState, JobNodeBlock, Task
from marketplace.nodes.models import Node, NodeReputation
from marketplace.payments.models import Payout
from tests.conftest import Persona
from tests.marketplace.federated.test_train_rounds import _by_node, _nodes, _run_node, _started, _verify, dataset
from training.compress import compress, decompress

__all__ = ["dataset"]  # the module-scoped dataset fixture, shared with the round tests

pytestmark = pytest.mark.django_db


def _zero(update: bytes) -> bytes:
    """No training at all: an all-zero update in the job's own encoding."""
    from training.compress import CompressionSpec

    delta = decompress(update)
    return compress({k: 0 * v for k, v in delta.items()}, CompressionSpec(name="int8"))[0]


@pytest.fixture
def lazy_runner(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Make the train runner lazy for the participants' seeds put in the returned set: ¼ of the local steps, the
    rest of the runner unchanged (compression, residual, upload). The marketplace's replay calls the same
    train_local with no progress callback: it still trains every step."""
    lazy: set[str] = set()
    import training.local

    real = training.local.train_local

    def train(*args: Any, **kwargs: Any) -> Any:
        steps, seed = args[6], args[7]
        if str(seed) in lazy and kwargs.get("progress") is not None:
            return real(*args[:6], max(1, steps // 4), seed, *args[8:], **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(training.local, "train_local", train)
    return lazy


def _round(job: Any, nodes: list[Any], tmp: Path, index: int, tamper: dict[Any, Any] | None = None) -> list[Any]:
    leased = dispatch.schedule()
    for assignment_id, node in _by_node(leased, nodes).items():
        hook = (tamper or {}).get(Assignment.objects.get(id=assignment_id).task.payload["participant"])
        assert _run_node(node, assignment_id, tmp / f"r{index}", hook).status_code == 201
        _verify(assignment_id)
    federated.round_close(job_id=job.id, index=index, why="quorum")
    return leased


def _participant_of(leased: list[Any], participant: int) -> Assignment:
    return next(
        a
        for a in Assignment.objects.filter(id__in=leased).select_related("task", "node")
        if a.task.payload["participant"] == participant
    )


def _assert_caught(cheat: Assignment, job: Any, words: str) -> None:
    cheat.refresh_from_db()
    assert cheat.state == AssignmentState.REJECTED
    assert words in cheat.state_reason, cheat.state_reason
    assert not Payout.objects.filter(assignment_id=cheat.id).exists()
    assert JobNodeBlock.objects.get(job=job, node=cheat.node).blocked
    node = Node.objects.get(id=cheat.node_id)
    assert (node.consecutive_valid, node.invalid_count) == (0, 1)


def test_a_zero_update_is_rejected_unpaid_and_its_node_blocked_while_the_honest_ones_are_paid(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path
) -> None:
    job = _started(poster, dataset, rounds=2, participants=3)
    nodes = _nodes(operator, 4)
    leased = _round(job, nodes, tmp_path, 0, {0: _zero})
    cheat = _participant_of(leased, 0)
    _assert_caught(cheat, job, "no measurable progress")
    rnd = TrainRound.objects.get(job=job, index=0)
    assert rnd.state == RoundState.CLOSED
    assert rnd.metrics["accepted"] == 2
    assert rnd.metrics["caught"] == [str(cheat.id)]
    honest = Assignment.objects.filter(id__in=leased).exclude(id=cheat.id)
    assert all(a.state == AssignmentState.ACCEPTED for a in honest)
    assert Payout.objects.filter(job=job).count() == 2
    # Round 1: the blocked node gets nothing of the job; the fourth node takes the slot.
    again = dispatch.schedule()
    assert len(again) == 3
    assert not Assignment.objects.filter(id__in=again, node=cheat.node).exists()


def test_a_lazy_quarter_steps_update_is_caught_by_the_replay_and_the_round_still_closes(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, lazy_runner: set[str], settings: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "TRAIN_REPLAY_SEED": 1}
    job = _started(poster, dataset, rounds=1, participants=3)
    nodes = _nodes(operator, 3)
    assert all(replay_probability(n.node) == 1.0 for n in nodes)  # new nodes: every update is replayed
    lazy_seed = next(t.payload["seed"] for t in Task.objects.filter(job=job) if t.payload["participant"] == 0)
    lazy_runner.add(str(lazy_seed))
    leased = _round(job, nodes, tmp_path, 0)
    cheat = _participant_of(leased, 0)
    _assert_caught(cheat, job, "replay check failed")
    rnd = TrainRound.objects.get(job=job, index=0)
    assert sorted(rnd.metrics["replayed"]) == sorted(str(a) for a in leased)
    assert rnd.metrics["accepted"] == 2
    assert Payout.objects.filter(job=job).count() == 2
    job.refresh_from_db()
    assert job.state == "completed", job.state_reason


def test_a_lazy_powersgd_update_is_caught_and_honest_powersgd_updates_pass_round_after_round(
    poster: Persona, operator: Persona, dataset: bytes, tmp_path: Path, lazy_runner: set[str], settings: Any
) -> None:
    # What is checked here is the PowerSGD check itself: every update is replayed (a replay share of 1 keeps the
    # chance at 1 whatever the nodes earn), so the outcome does not hang on a random draw.
    settings.HASHWORK = {**settings.HASHWORK, "TRAIN_REPLAY_SHARE": 1.0}
    job = _started(poster, dataset, rounds=3, participants=2, compression={"name": "powersgd"})
    nodes = _nodes(operator, 3)
    for index in range(2):
        _round(job, nodes, tmp_path, index)
        metrics = TrainRound.objects.get(job=job, index=index).metrics
        assert (metrics["accepted"], metrics["rejected"]) == (2, {})
        assert len(metrics["replayed"]) == 2
    # Round 2: participant 0 turns lazy, with its residual from the two honest rounds.
    tasks = Task.objects.filter(job=job, group=2)
    lazy_runner.add(str(next(t.payload["seed"] for t in tasks if t.payload["participant"] == 0)))
    leased = _round(job, nodes, tmp_path, 2)
    cheat = _participant_of(leased, 0)
    cheat.refresh_from_db()
    assert "residual-free sketch" in cheat.state_reason, cheat.state_reason
    assert cheat.state == AssignmentState.REJECTED
    assert not Payout.objects.filter(assignment_id=cheat.id).exists()
    assert JobNodeBlock.objects.get(job=job, node=cheat.node).blocked
    assert Payout.objects.filter(job=job).count() == 5


def test_replay_probability_falls_with_earned_train_reputation_never_below_the_floor_and_resets_when_caught(
    operator: Persona, settings: Any
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "TRUSTED_AFTER": 10, "TRAIN_REPLAY_SHARE": 0.0, "TRAIN_REPLAY_FLOOR": 0.1}
    (persona,) = _nodes(operator, 1)
    node = persona.node

    def earned(score: float) -> None:
        NodeReputation.objects.update_or_create(
            node=node, kind="train", defaults={"score": score, "updated_at": timezone.now()}
        )

    assert replay_probability(node) == 1.0
    # A long streak on another kind (cheap benchmark tasks) buys nothing on train.
    node.valid_count = node.consecutive_valid = 1000
    NodeReputation.objects.create(node=node, kind="benchmark", score=1000.0, updated_at=timezone.now())
    assert replay_probability(node) == 1.0
    earned(5)
    assert replay_probability(node) == pytest.approx(0.55)
    earned(1000)
    assert replay_probability(node) == pytest.approx(0.1)
    node.invalid_count = 1
    earned(10)
    assert replay_probability(node) == pytest.approx(0.55)  # a caught node needs twice the score
    node.consecutive_valid = 0
    assert replay_probability(node) == 1.0
