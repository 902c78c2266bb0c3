"""The structure the architecture doc promises: modules stay small, kinds register from their apps, and every
lower-to-higher call goes through the hooks in marketplace.core.hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.core import hooks
from marketplace.jobs import kinds
from marketplace.jobs.kinds import DrivenKind, ReplicatedKind, SpotCheckedKind

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("marketplace", "nodeagent", "synthetic", "training", "contracts", "protocol")
MAX_LINES = 400


def _modules() -> list[Path]:
    found = []
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            if "migrations" in path.parts or "vendor" in path.parts:
                continue
            found.append(path)
    return found


def test_no_module_is_over_400_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, f"split these along their seams (at most {MAX_LINES} lines): {too_long}"


@pytest.mark.parametrize(
    ("name", "strategy"),
    [("benchmark", ReplicatedKind), ("render", SpotCheckedKind), ("train", DrivenKind)],
)
def test_each_kind_is_registered_by_its_app_with_its_strategy(name: str, strategy: type) -> None:
    assert isinstance(kinds.get(name), strategy)


def test_the_train_kind_lives_with_the_federated_app() -> None:
    assert type(kinds.get("train")).__module__ == "marketplace.federated.kind"


def test_every_hook_has_its_receiver_connected() -> None:
    assert hooks.assignment_accepted.receivers, "payments must connect the payout receiver"
    assert hooks.node_deactivated.receivers, "jobs must connect the work release receiver"
    assert set(hooks.job_kind_names()) == set(kinds.names())


def test_every_marketplace_task_has_the_time_limits_of_its_queue() -> None:
    from marketplace.celery import app
    from marketplace.core.queues import CELERY_TASK_ROUTES, TIME_LIMITS, Queue, TaskName

    app.loader.import_default_modules()
    for name in TaskName:
        task = app.tasks[name.value]
        queue = Queue(CELERY_TASK_ROUTES[name.value]["queue"])
        limits = TIME_LIMITS[queue]
        assert (task.time_limit, task.soft_time_limit) == (limits["time_limit"], limits["soft_time_limit"]), name


def test_a_kind_that_cannot_parse_its_spec_is_refused_when_it_is_defined() -> None:
    with pytest.raises(TypeError, match="needs a spec_model or its own parse"):

        class _Unparseable(ReplicatedKind[str]):  # a kind with neither a schema nor a parser
            name = "unparseable"
