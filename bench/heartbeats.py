"""Heartbeats at scale: many simulated nodes heartbeating at the agent's default interval, with the heartbeat's
latency (client round trip, and the web server's own time from its access log) and the dispatch rate of a small
simulator fleet (bench/nodesim.py) working alone and then while they heartbeat, in the same run.

    .venv/bin/python bench/heartbeats.py [--nodes 10000] [--interval 10] [--duration 60] [--connections 100] \\
        [--fleet-nodes 5] [--fleet-slots 2] [--tasks 100]

The heartbeat-only nodes are made in bulk in the stack's database (one `manage.py shell` process), not through
the enrolment API: the API allows an operator ten enrolments an hour, and 10,000 would take a thousand operators
and tens of minutes. Their rows are what enrolment writes (a token hash, broker user name and password hash,
capabilities, one slot), so a heartbeat reads and writes exactly what it does for an enrolled node. They ask a
price no job pays (min_price above every kind's price), so the scheduler considers and skips them: they never
hold work, since they consume no queue. Uses DATABASE_URL/REDIS_URL as bench/dispatch.py does (PostgreSQL here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

# The nodes' rows, as node_enroll writes them (tokens and broker passwords hashed), in one bulk insert.
CREATE_NODES = r"""
import json, os, secrets
from django.contrib.auth import get_user_model
from marketplace.core import hooks
from marketplace.nodes import broker
from marketplace.nodes.authentication import token_new
from marketplace.nodes.models import Node
n = int(os.environ["BENCH_HB_NODES"])
caps = json.loads(os.environ["BENCH_HB_CAPS"])
operator, _ = get_user_model().objects.get_or_create(username="heartbeat-operator")
price = {kind: str(10**40) for kind in hooks.job_kind_names()}
tokens, rows = [], []
for i in range(n):
    token, digest = token_new()
    _, password_sha256 = broker.password_new()
    node = Node(operator=operator, name=f"hb-{i}", wallet_address="0x" + secrets.token_hex(20), token_hash=digest,
                capabilities=caps, slots=1, min_price=price, broker_password_sha256=password_sha256)
    node.broker_username = broker.node_username(node.id)
    rows.append(node)
    tokens.append(token)
Node.objects.bulk_create(rows, batch_size=1000)
with open(os.environ["BENCH_HB_OUT"], "w") as out:
    json.dump(tokens, out)
"""
# The web server's access log line for a heartbeat: the request and its time in microseconds (%(D)s).
ACCESS_FORMAT = 'hwbench "%(r)s" %(s)s %(D)s'
ACCESS_LINE = re.compile(r'hwbench "POST /api/nodes/heartbeat/ [^"]*" (\d+) (\d+)')


def nodes_create(stack: Any, count: int, capabilities: dict[str, Any]) -> list[str]:
    out = stack.var_dir / "heartbeat-tokens.json"
    env = {**stack.env, "BENCH_HB_NODES": str(count), "BENCH_HB_CAPS": json.dumps(capabilities),
           "BENCH_HB_OUT": str(out)}  # fmt: skip
    subprocess.run([sys.executable, "manage.py", "shell", "-c", CREATE_NODES], cwd=ROOT, env=env, check=True)
    tokens: list[str] = json.loads(out.read_text())
    return tokens


class Load:
    """Heartbeats of `tokens` every `interval` s from one asyncio loop (a thread), each node at its own phase."""

    def __init__(self, url: str, tokens: list[str], body: dict[str, Any], *, interval: float, connections: int):
        self.url = f"{url}/api/nodes/heartbeat/"
        self.tokens, self.body, self.interval, self.connections = tokens, body, interval, connections
        self.stop = threading.Event()
        self.measuring = False
        # (round trip s, from the scheduled moment s, HTTP status) of heartbeats sent while measuring.
        self.samples: list[tuple[float, float, int]] = []
        self.errors = 0
        # Set once every node's first heartbeat is on its way (its phase has passed): from then the load is steady.
        self.steady = threading.Event()
        self._begun = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            count = len(self.tokens)
            await asyncio.gather(
                *(self._node(session, t, self.interval * i / count) for i, t in enumerate(self.tokens))
            )

    async def _node(self, session: Any, token: str, phase: float) -> None:
        loop = asyncio.get_running_loop()
        headers = {"Authorization": f"Node {token}"}
        await asyncio.sleep(phase)
        self._begun += 1  # one event loop: no lock needed
        if self._begun == len(self.tokens):
            self.steady.set()
        due = loop.time()
        while not self.stop.is_set():
            sent = loop.time()
            try:
                async with session.post(self.url, json=self.body, headers=headers) as reply:
                    await reply.read()
                    status = reply.status
            except Exception:
                self.errors += 1
                status = 0
            done = loop.time()
            if self.measuring:
                self.samples.append((done - sent, done - due, status))
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))


def percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), cuts[98]


def fleet_job(stack: Any, fleet: Any, tasks: int, seed: int) -> float:
    """Verified tasks/s of one benchmark job worked by `fleet`, over the server's lease→accept window."""
    from bench.dispatch import STEPS_SQL

    job_id = stack.post_job({"tasks": tasks, "matrix_size": 8, "seed": seed}, replication=1)
    stack.wait_job(job_id, timeout=1800)
    rows = stack.sql(STEPS_SQL, job_id)
    return tasks / (max(r[3] for r in rows) - min(r[0] for r in rows)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000, help="heartbeat-only nodes (default 10000)")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat seconds (default 10, the agent's)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured heartbeats (default 60)")
    parser.add_argument("--connections", type=int, default=100, help="client connections at most (default 100)")
    parser.add_argument("--fleet-nodes", type=int, default=5, help="simulated working nodes (default 5)")
    parser.add_argument("--fleet-slots", type=int, default=2, help="their slots (default 2)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks of each fleet job (default 100)")
    args = parser.parse_args()

    import django

    django.setup()
    from bench.nodesim import ENROLMENTS_PER_OPERATOR, Fleet
    from protocol import BrokerHealth, Heartbeat
    from tests.e2e.stack import Stack

    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        stack = Stack(
            Path(tmp), NODE_ONLINE_SECONDS="90", HASHWORK_LEASE_SECONDS="120", HASHWORK_START_WINDOW_SECONDS="120",
            GUNICORN_CMD_ARGS=f"--access-logformat '{ACCESS_FORMAT}'",
        ).start()  # fmt: skip
        try:
            operators = stack.operator_tokens_many(-(-args.fleet_nodes // ENROLMENTS_PER_OPERATOR))
            with Fleet(stack.url, operators, nodes=args.fleet_nodes, slots=args.fleet_slots) as fleet:
                alone = fleet_job(stack, fleet, args.tasks, seed=1)
                began = time.perf_counter()
                tokens = nodes_create(stack, args.nodes, fleet.capabilities)
                made = time.perf_counter() - began
                body = Heartbeat(capabilities=fleet.capabilities, free_slots=1, broker=BrokerHealth(ok=True)).to_json()
                load = Load(stack.url, tokens, body, interval=args.interval, connections=args.connections)
                load.thread.start()
                if not load.steady.wait(timeout=args.interval + 60):
                    raise SystemExit("the heartbeat load did not reach every node within its interval + 60 s")
                log = stack.var_dir / "logs" / "web.log"
                offset = log.stat().st_size
                load.measuring, measured_from = True, time.perf_counter()
                loaded = fleet_job(stack, fleet, args.tasks, seed=2)
                time.sleep(max(0.0, args.duration - (time.perf_counter() - measured_from)))
                load.measuring = False
                measured = time.perf_counter() - measured_from
                load.stop.set()
                load.thread.join(timeout=args.interval + 70)
                with log.open("rb") as handle:
                    handle.seek(offset)
                    server = [
                        m for m in map(ACCESS_LINE.search, handle.read().decode(errors="replace").splitlines()) if m
                    ]
        finally:
            stack.stop()
    ok = [s for s in load.samples if s[2] == 200]
    rtt50, rtt99 = percentiles([s[0] for s in ok])
    due50, due99 = percentiles([s[1] for s in ok])
    srv50, srv99 = percentiles([int(m.group(2)) / 1e6 for m in server])
    failed = sum(1 for s in load.samples if s[2] == 0)
    print(
        f"{args.nodes} nodes made in bulk in {made:.1f}s; heartbeat every {args.interval:.0f}s; "
        f"{os.cpu_count()} CPUs; client connections ≤ {args.connections}"
    )
    print(
        f"offered {args.nodes / args.interval:.0f}/s, answered 200 {len(ok) / measured:.0f}/s over {measured:.0f}s; "
        f"while measuring {failed} failed or timed out (60 s), {len(load.samples) - len(ok) - failed} other status"
    )
    print(f"{'heartbeat latency':<42}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'client round trip':<42}{rtt50 * 1000:>10.1f}{rtt99 * 1000:>10.1f}")
    print(f"{'client, from the due moment (incl. queueing)':<42}{due50 * 1000:>10.1f}{due99 * 1000:>10.1f}")
    print(f"{'web server (gunicorn %(D)s)':<42}{srv50 * 1000:>10.1f}{srv99 * 1000:>10.1f}")
    print(f"dispatch ({args.fleet_nodes} simulated nodes × {args.fleet_slots} slots, {args.tasks} tasks): "
          f"alone {alone:.1f}/s, while heartbeating {loaded:.1f}/s ({loaded / alone:.2f}×)")  # fmt: skip


if __name__ == "__main__":
    main()
