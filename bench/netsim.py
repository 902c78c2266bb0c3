"""A volunteer network of 100,000 nodes in simulation, under the marketplace's policies and plain 2× replication.

    .venv/bin/python bench/netsim.py --nodes 100000 --cheaters 0.05 --hours 2 --seed 1

Both policies run on the same network (nodes, operators, churn, jobs: one seed), one after the other. The
marketplace's rules are its own functions (marketplace.jobs.reputation, diversity, policy, leases, kinds.decide);
see bench/netsim_engine/policies.py and docs/benchmarks.md, "Network simulator", for the model and its sources.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The latest dispatch figure in docs/benchmarks.md: 12.5 accepted assignments/s on this 2-core machine, agents
# included (replication 1, so one assignment per accepted task): 2 cores / 12.5 per s = 160 ms of a core each.
DEFAULT_SERVER_COST_MS = 2 * 1000 / 12.5


def parser() -> argparse.ArgumentParser:
    defaults = _params_defaults()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Prints progress each simulated hour, then one table with a column per policy, and the wall time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=defaults.nodes, help="volunteer nodes in the network")
    p.add_argument(
        "--cheaters",
        type=float,
        default=defaults.cheaters,
        help="share of nodes that cheat, a third each lazy (a cheap wrong answer all lazy nodes share), random "
        "(a unique wrong answer on --cheat-prob of results) and colluding Sybil farms",
    )
    p.add_argument("--hours", type=float, default=defaults.hours, help="simulated hours during which jobs arrive")
    p.add_argument(
        "--drain-hours", type=float, default=defaults.drain_hours, help="simulated hours after, with no new jobs"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the network, churn, jobs and draws")
    p.add_argument(
        "--load",
        type=float,
        default=defaults.load,
        help="offered work as a share of what the network accepts at plain 2x replication with nothing lost",
    )
    p.add_argument("--gpu-share", type=float, default=defaults.gpu_share, help="share of honest nodes with GPUs")
    p.add_argument(
        "--crash-rate", type=float, default=defaults.crash_rate, help="share of assignments whose runner fails"
    )
    p.add_argument(
        "--cheat-prob", type=float, default=defaults.cheat_prob, help="how often a random or Sybil cheater cheats"
    )
    p.add_argument(
        "--chunk-images", type=int, default=defaults.chunk_images, help="images per chunk (a spot check redoes one)"
    )
    p.add_argument("--work-median-s", type=float, default=defaults.work_median_s, help="task work on a speed-1 node")
    p.add_argument(
        "--server-cost-ms",
        type=float,
        default=DEFAULT_SERVER_COST_MS,
        help="marketplace CPU per assignment, in core-milliseconds; default: 2 cores / 12.5 accepted per s, the "
        "latest bench/dispatch.py figure in docs/benchmarks.md",
    )
    p.add_argument(
        "--policies", default="marketplace,plain", help="comma-separated: marketplace, plain (both by default)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _params_defaults():  # type: ignore[no-untyped-def]
    from bench.netsim_engine.population import Params

    return Params()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bench.netsim_engine.engine import Run
    from bench.netsim_engine.policies import Marketplace, Plain
    from bench.netsim_engine.population import Params, network_build
    from bench.netsim_engine.report import figures, online_slot_seconds, table

    started = time.perf_counter()
    params = dataclasses.replace(
        Params(),
        nodes=args.nodes,
        cheaters=args.cheaters,
        hours=args.hours,
        drain_hours=args.drain_hours,
        seed=args.seed,
        load=args.load,
        gpu_share=args.gpu_share,
        crash_rate=args.crash_rate,
        cheat_prob=args.cheat_prob,
        chunk_images=args.chunk_images,
        work_median_s=args.work_median_s,
    )
    net = network_build(params)
    online_s = online_slot_seconds(net)
    cheats = sum(n.cheat is not None for n in net.nodes)
    print(
        f"network: {len(net.nodes):,} nodes of {net.operators:,} operators ({cheats:,} cheating), availability "
        f"{net.availability:.2f}, {len(net.flips):,} session changes, {len(net.jobs):,} jobs of "
        f"{sum(len(j.work) for j in net.jobs):,} units over {params.hours:g} h (+{params.drain_hours:g} h drain), "
        f"built in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    chosen = {"marketplace": Marketplace, "plain": Plain}
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    rows, columns, hourly = [], [], []
    spans = math.ceil(params.hours + params.drain_hours)
    for name in names:
        policy = chosen[name]()
        stats = Run(net, policy, progress=None if args.quiet else lambda line: print(line, flush=True)).run()
        rows.append(figures(stats, net, server_cost_ms=args.server_cost_ms, online_s=online_s))
        columns.append(policy.name)
        per_hour = " ".join(f"{n:,}" for n in stats.units_per_hour[:spans])
        hourly.append(f"units accepted per hour, {policy.name}: {per_hour}")
    print(f"server cost {args.server_cost_ms:.0f} core-ms per assignment")
    print(table(rows, columns))
    print("\n".join(hourly))
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
