"""Smoke test of the network simulator (bench/netsim.py): a 1,000-node network under both policies."""

from __future__ import annotations

import dataclasses

import pytest

from bench.netsim import main
from bench.netsim_engine.engine import Run
from bench.netsim_engine.policies import Marketplace, Plain
from bench.netsim_engine.population import Params, network_build
from bench.netsim_engine.report import open_at_end
from bench.netsim_engine.state import Stats

SMALL = Params(nodes=1000, hours=1.5, drain_hours=0.5, seed=3)


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[Run, Stats]]:
    net = network_build(SMALL)
    found = {}
    for policy in (Marketplace(), Plain()):
        run = Run(net, policy)
        found[policy.name] = (run, run.run())
    return found


def test_both_policies_run_the_same_jobs_on_the_same_network(runs: dict[str, tuple[Run, Stats]]) -> None:
    (market, m), (plain, p) = runs["marketplace"], runs["plain 2x"]
    assert m.jobs_total == p.jobs_total > 0
    assert [j.arrive for j in market.jobs] == [j.arrive for j in plain.jobs]
    assert m.units > 0
    assert p.units > 0


def test_every_lease_and_every_result_is_accounted_for(runs: dict[str, tuple[Run, Stats]]) -> None:
    for run, s in runs.values():
        still_open, awaiting = open_at_end(run)
        assert s.leases == s.submitted + s.failed + s.expired + s.cancelled + still_open
        assert s.submitted == s.accepted_replicas + s.rejected + s.late + awaiting
        units = sum(job.size for job in run.jobs)
        assert s.wrong_units <= s.units <= units
        assert len(s.jobs_done) + s.jobs_failed <= s.jobs_total
        assert sum(s.units_per_hour) == s.units
        assert sum(s.leases_per_minute) == s.leases


def test_plain_replication_needs_two_agreeing_replicas_and_never_spot_checks(
    runs: dict[str, tuple[Run, Stats]],
) -> None:
    _, s = runs["plain 2x"]
    assert s.spot_checks == 0
    assert s.accepted_replicas >= 2 * s.units


def test_the_marketplace_trusts_proven_nodes_with_lone_spot_checked_replicas(
    runs: dict[str, tuple[Run, Stats]],
) -> None:
    _, s = runs["marketplace"]
    assert s.spot_checks > 0
    # Every accepted unit has an accepted replica; the spot-checked ones have only that one.
    assert s.units <= s.accepted_replicas < 2 * s.units


def test_no_cheaters_means_no_wrong_result_is_accepted() -> None:
    net = network_build(dataclasses.replace(SMALL, cheaters=0.0, hours=1.0))
    assert not any(n.cheat for n in net.nodes)
    for policy in (Marketplace(), Plain()):
        stats = Run(net, policy).run()
        assert stats.units > 0
        assert stats.wrong_units == 0


def test_a_colluding_operator_never_holds_two_replicas_of_a_task_under_the_marketplace() -> None:
    net = network_build(dataclasses.replace(SMALL, cheaters=0.3, hours=1.0))
    run = Run(net, Marketplace())
    leased = run.lease

    def lease(task, node, t):  # type: ignore[no-untyped-def]
        assert all(a.node.operator != node.operator for a in task.open.values())
        leased(task, node, t)

    run.lease = lease  # type: ignore[method-assign]
    assert run.run().leases > 0


def test_the_command_line_prints_one_column_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "300", "--hours", "0.5", "--drain-hours", "0.25", "--quiet"]) == 0
    out = capsys.readouterr().out
    for line in ("marketplace", "plain 2x", "wrong results accepted", "server cores at peak"):
        assert line in out
    assert "wall time" in out
