"""The figures of one simulated run: throughput, verification overhead, completion times, wrong results accepted,
and the server the network would need."""

from __future__ import annotations

import statistics
from typing import Any

from .engine import Run, Stats
from .population import HOUR, Network
from .state import OPEN, SUBMITTED


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def online_slot_seconds(net: Network) -> float:
    """Slot-seconds the nodes were online over the whole run (what they could have computed for)."""
    end = (net.params.hours + net.params.drain_hours) * HOUR
    total = 0.0
    for node in net.nodes:
        flips = [t for t in node.sessions if t < end] + [end]
        total += node.slots * sum(flips[i + 1] - flips[i] for i in range(0, len(flips) - 1, 2))
    return total


def figures(stats: Stats, net: Network, *, server_cost_ms: float, online_s: float) -> dict[str, Any]:
    hours = net.params.hours
    units = max(1, stats.units)
    # The first hour is the network's start (every node idle at once, nobody trusted yet): not its steady state.
    steady = stats.leases_per_minute[60:] or stats.leases_per_minute
    peak = max(steady) / 60.0
    lost = stats.expired + stats.failed
    return {
        "units accepted / h": stats.units_in_horizon / hours,
        "replicas leased / unit": stats.leases / units,
        "replicas returned / unit": stats.submitted / units,
        "spot-check re-render / unit": stats.spot_work_replicas / units,
        "wrong results accepted": stats.wrong_units / units,
        "  of which lazy/random/sybil": "/".join(str(stats.wrong_by.get(c, 0)) for c in ("lazy", "random", "sybil")),
        "job completion p50 (h)": statistics.median(stats.jobs_done) / HOUR if stats.jobs_done else float("nan"),
        "job completion p95 (h)": _quantile(stats.jobs_done, 0.95) / HOUR,
        "jobs completed": len(stats.jobs_done),
        "jobs failed": stats.jobs_failed,
        "jobs unfinished": stats.jobs_total - len(stats.jobs_done) - stats.jobs_failed,
        "attempts lost (expired+failed)": lost / max(1, stats.leases),
        "  expired / failed": f"{stats.expired}/{stats.failed}",
        "spot checks (caught)": f"{stats.spot_checks} ({stats.spot_caught})",
        "slot utilisation": stats.busy_slot_s / online_s if online_s else 0.0,
        "assignments/s mean": stats.leases / ((hours + net.params.drain_hours) * HOUR),
        "assignments/s peak minute, h > 1": peak,
        "server cores at peak": peak * server_cost_ms / 1000.0,
        "events": stats.events,
        "wall s": stats.wall_s,
    }


def table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The figures side by side, one policy a column."""
    lines = [f"{'':34}" + "".join(f"{n:>16}" for n in names)]
    for key in rows[0]:
        cells = []
        for row in rows:
            value = row[key]
            if isinstance(value, float):
                cells.append(f"{value:>16.4f}" if abs(value) < 10 else f"{value:>16,.1f}")
            elif isinstance(value, int):
                cells.append(f"{value:>16,}")
            else:
                cells.append(f"{value!s:>16}")
        lines.append(f"{key:34}" + "".join(cells))
    return "\n".join(lines)


def open_at_end(run: Run) -> tuple[int, int]:
    """(open assignments, submitted ones awaiting a verdict) when `run` stopped."""
    tasks = [task for job in run.jobs if job.state == OPEN for task in job.tasks]
    waiting = sum(a.state == SUBMITTED for task in tasks for a in task.judged.values())
    return sum(len(task.open) for task in tasks), waiting
