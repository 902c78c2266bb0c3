"""Scale-out, safely: 3 web servers, 3 marketplace workers and 3 beats (each triggering `schedule`) on one
PostgreSQL and one Redis, driven by simulated nodes (bench/nodesim.py) with replication 2 and a failing and a
vanishing node, never double-lease, over-lease, double-verify or double-pay.

No chain here (the test stays near a minute): `payments reconcile` needs one and is left to tests/e2e/test_money.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.nodesim import Fleet
from tests.e2e.stack import Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

# Live replicas (models.ASSIGNMENT_LIVE): they count towards the task's wanted replicas.
OVER_LEASED = """
    SELECT t.id, t.replicas_wanted, count(a.id) FROM jobs_task t JOIN jobs_assignment a ON a.task_id = t.id
    WHERE t.job_id = %s AND a.state IN ('leased', 'running', 'submitted', 'accepted')
    GROUP BY t.id, t.replicas_wanted HAVING count(a.id) > t.replicas_wanted
"""


def test_three_of_each_never_double_lease_verify_or_pay(tmp_path: Path) -> None:
    stack = Stack(tmp_path, web_servers=3, workers=3, beats=3).start()
    try:
        operators = stack.operator_tokens_many(4)
        fleet = Fleet(stack.urls, operators, nodes=10, slots=2, fail=0.1, vanish=0.1, heartbeat_seconds=1, seed=5)
        with fleet:
            assert sorted(fleet.behaviours) == ["failing", *["honest"] * 8, "vanishing"]
            job_id = stack.post_job({"tasks": 40, "matrix_size": 8, "seed": 2}, replication=2)
            over: list[tuple[object, ...]] = []

            def finished() -> bool:
                # Sampled all along the run: never more live replicas than the task wants.
                over.extend(stack.sql(OVER_LEASED, job_id))
                return stack.job(job_id)["state"] in {"completed", "failed", "cancelled", "expired"}

            wait_for(finished, timeout=150, what="the job to end", interval=0.2)
            assert stack.job(job_id)["state"] == "completed", stack.job(job_id)
            assert over == []
            assert fleet.counters.vanished == 1

        # No task leased twice to the same node, retakeable (expired, released) replicas included.
        twice = stack.sql(
            "SELECT a.task_id, a.node_id, count(*) FROM jobs_assignment a JOIN jobs_task t ON t.id = a.task_id "
            "WHERE t.job_id = %s GROUP BY 1, 2 HAVING count(*) > 1",
            job_id,
        )
        assert twice == []
        tasks = stack.sql(
            "SELECT t.state, t.replicas_wanted, t.live_replicas, "
            "count(a.id) FILTER (WHERE a.state = 'accepted'), count(a.id) FILTER (WHERE a.state = 'submitted') "
            "FROM jobs_task t LEFT JOIN jobs_assignment a ON a.task_id = t.id WHERE t.job_id = %s "
            "GROUP BY t.id",
            job_id,
        )
        assert len(tasks) == 40
        for state, wanted, live, accepted, submitted in tasks:
            # Verified once: completed with exactly its wanted replicas accepted, none left waiting for a verdict.
            assert (state, submitted) == ("completed", 0)
            assert accepted == wanted == live >= 2
        # A verdict applied twice would count an acceptance twice on the node's record.
        ((valid, accepted_total),) = stack.sql(
            "SELECT (SELECT coalesce(sum(valid_count), 0) FROM nodes_node), "
            "(SELECT count(*) FROM jobs_assignment WHERE state = 'accepted')"
        )
        assert valid == accepted_total == sum(t[3] for t in tasks)

        # Exactly one payout per accepted replica, and none for any other.
        def paid() -> bool:
            ((count,),) = stack.sql("SELECT count(*) FROM payments_payout WHERE job_id = %s", job_id)
            return bool(count >= accepted_total)

        wait_for(paid, timeout=60, what="the payouts of every accepted replica", interval=0.3)
        payouts = stack.sql(
            "SELECT a.state, count(p.id) FROM payments_payout p JOIN jobs_assignment a ON a.id = p.assignment_id "
            "WHERE p.job_id = %s GROUP BY a.state",
            job_id,
        )
        assert payouts == [("accepted", accepted_total)]
        assert stack.sql("SELECT assignment_id FROM payments_payout GROUP BY assignment_id HAVING count(*) > 1") == []
        stack.supervisor.check()
    finally:
        stack.stop()
