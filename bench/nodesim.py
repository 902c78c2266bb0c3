"""A node simulator and load tool: many simulated nodes in one process speaking the agents' real protocol.

Each node enrols through the API with an operator's token, heartbeats over HTTP with its own token (a keep-alive
session per node), consumes its own Celery queue with its own Redis ACL credentials and key prefix (a kombu
consumer per slot, as the agent's worker consumes with one pool process per slot), starts each assignment,
computes the benchmark result in-process with the agent's own runner function, signs it with the node's wallet as
the agent does, and uploads it. Behaviours, by fractions of the fleet: honest; failing (reports every assignment
failed); vanishing (takes its first message, never starts it, stops heartbeating); wrong (uploads a wrong,
correctly signed checksum).

    .venv/bin/python bench/nodesim.py --url http://127.0.0.1:8000 --operator-token T [--operator-token T2 …] \\
        --nodes 20 --slots 2 [--fail 0.05 --vanish 0.0 --wrong 0.0] [--duration 60] [--heartbeat-seconds 10]

An operator may enrol HASHWORK["ENROLMENTS_PER_HOUR"] nodes an hour (10; no environment variable changes it):
pass one --operator-token per ten nodes (replicas of a task also go to distinct operators, so replication 2 needs
at least two). Prints progress (accepted/s) every few seconds until --duration passes or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kombu import Connection, Exchange, Queue

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodeagent import probe  # noqa: E402
from nodeagent.runners.benchmark import run as benchmark_run  # noqa: E402
from nodeagent.signer import Wallet  # noqa: E402
from protocol import AssignmentMessage, BrokerHealth, Heartbeat  # noqa: E402

BEHAVIOURS = ("honest", "failing", "vanishing", "wrong")
AGENT_TASK = "nodeagent.run_assignment"
# The marketplace's default per operator and hour (marketplace/settings.py HASHWORK["ENROLMENTS_PER_HOUR"]).
ENROLMENTS_PER_OPERATOR = 10


@dataclass
class Counters:
    """What the fleet did, over all nodes (updated under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: int = 0
    started: int = 0
    submitted: int = 0
    failed: int = 0
    wrong: int = 0
    vanished: int = 0
    refused: int = 0
    errors: int = 0
    heartbeats: int = 0
    heartbeat_seconds: list[float] = field(default_factory=list)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class SimNode:
    """One enrolled node: its credentials, its behaviour, its heartbeat thread and one consumer thread per slot."""

    def __init__(self, fleet: Fleet, url: str, enrolment: dict[str, Any], wallet: Wallet, behaviour: str) -> None:
        self.fleet = fleet
        self.url = url
        node = enrolment["node"]
        self.node_id: str = node["id"]
        self.name: str = node["name"]
        self.broker_url: str = enrolment["broker_url"]
        self.broker_prefix: str = enrolment["broker_prefix"]
        self.queue = f"node.{self.node_id.replace('-', '')}"
        self.wallet = wallet
        self.behaviour = behaviour
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Node {enrolment['token']}"
        self.running: set[str] = set()
        self.lock = threading.Lock()
        self.gone = threading.Event()  # vanished: no more heartbeats, no more consuming
        self.consuming = threading.Semaphore(0)
        self.valid_count = 0
        self.threads: list[threading.Thread] = []

    # HTTP -------------------------------------------------------------------------------------------------------
    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(f"{self.url}{path}", timeout=30, **kwargs)

    def heartbeat(self) -> None:
        with self.lock:
            running = sorted(self.running)
        beat = Heartbeat(
            capabilities=self.fleet.capabilities,
            free_slots=max(0, self.fleet.slots - len(running)),
            running=running,
            broker=BrokerHealth(ok=True),
        )
        began = time.perf_counter()
        reply = self.post("/api/nodes/heartbeat/", json=beat.to_json())
        elapsed = time.perf_counter() - began
        counters = self.fleet.counters
        with counters.lock:
            counters.heartbeats += 1
            counters.heartbeat_seconds.append(elapsed)
        if reply.status_code == 200:
            self.valid_count = int(reply.json()["node"].get("valid_count", 0))

    def heartbeat_loop(self) -> None:
        for _ in range(self.fleet.slots):
            self.consuming.acquire()  # every slot consumes before the first heartbeat says the broker is ok
        while not self.fleet.stopping.is_set() and not self.gone.is_set():
            try:
                self.heartbeat()
            except requests.RequestException:
                self.fleet.counters.add("errors")
            self.fleet.stopping.wait(self.fleet.heartbeat_seconds)

    # Broker -----------------------------------------------------------------------------------------------------
    def consume_loop(self) -> None:
        """One slot: a kombu consumer on the node's queue, inside its prefix, prefetching one message (the agent's
        worker_prefetch_multiplier=1), acknowledging after the work (task_acks_late)."""
        queue = Queue(self.queue, Exchange(self.queue, type="direct"), routing_key=self.queue)
        options = {"global_keyprefix": self.broker_prefix, "visibility_timeout": 3600}
        signalled = False
        while not self.fleet.stopping.is_set() and not self.gone.is_set():
            try:
                with (
                    Connection(self.broker_url, transport_options=options) as conn,
                    conn.Consumer([queue], callbacks=[self.on_message], accept=["json"], prefetch_count=1),
                ):
                    if not signalled:
                        self.consuming.release()
                        signalled = True
                    while not self.fleet.stopping.is_set() and not self.gone.is_set():
                        with contextlib.suppress(socket.timeout, TimeoutError):
                            conn.drain_events(timeout=0.5)
            except Exception:  # a lost connection: reconnect, as the agent's worker does
                self.fleet.counters.add("errors")
                if not signalled:
                    self.consuming.release()
                    signalled = True
                self.fleet.stopping.wait(1.0)

    def on_message(self, body: Any, message: Any) -> None:
        try:
            if message.headers.get("task") == AGENT_TASK and not self.gone.is_set():
                args = body[0] if isinstance(body, list | tuple) else body.get("args", [])
                self.fleet.counters.add("received")
                self.work(AssignmentMessage.from_json(args[0]))
        except Exception:
            self.fleet.counters.add("errors")
        finally:
            message.ack()  # the lease, not the broker, decides what is retried (as the agent's worker)

    # One assignment -------------------------------------------------------------------------------------------
    def work(self, assignment: AssignmentMessage) -> None:
        counters = self.fleet.counters
        aid = assignment.assignment_id
        if self.behaviour == "vanishing":
            self.gone.set()
            counters.add("vanished")
            return
        if self.fleet.start_call and self.post(f"/api/assignments/{aid}/start/").status_code != 200:
            counters.add("refused")
            return
        counters.add("started")
        with self.lock:
            self.running.add(aid)
        try:
            if self.behaviour == "failing":
                self.post(f"/api/assignments/{aid}/fail/", json={"reason": "simulated failure (nodesim)"})
                counters.add("failed")
                return
            metrics = benchmark_run(assignment.payload)
            if self.behaviour == "wrong":
                metrics["checksum"] = hashlib.sha256(f"{self.node_id}/{aid}".encode()).hexdigest()
            # The artifact is the metrics as canonical JSON, as nodeagent.child writes it.
            artifact = json.dumps(metrics, sort_keys=True, separators=(",", ":")).encode()
            sha256 = hashlib.sha256(artifact).hexdigest()
            signature = self.wallet.sign_result(aid, sha256)
            reply = self.post(
                f"/api/assignments/{aid}/result/",
                data={"sha256": sha256, "signature": signature, "metrics": artifact.decode()},
                files={"artifact": ("artifact", artifact, "application/octet-stream")},
            )
            if reply.status_code == 201:
                counters.add("wrong" if self.behaviour == "wrong" else "submitted")
            else:
                counters.add("refused")
        finally:
            with self.lock:
                self.running.discard(aid)

    def start(self) -> None:
        for slot in range(self.fleet.slots):
            self.threads.append(threading.Thread(target=self.consume_loop, name=f"{self.name}-{slot}", daemon=True))
        self.threads.append(threading.Thread(target=self.heartbeat_loop, name=f"{self.name}-hb", daemon=True))
        for thread in self.threads:
            thread.start()


def behaviours_draw(nodes: int, *, fail: float, vanish: float, wrong: float, seed: int) -> list[str]:
    """Each node's behaviour: round(fraction × nodes) of each misbehaviour, the rest honest, in a seeded order."""
    counts = {"failing": round(fail * nodes), "vanishing": round(vanish * nodes), "wrong": round(wrong * nodes)}
    if sum(counts.values()) > nodes:
        raise ValueError("--fail + --vanish + --wrong exceed the whole fleet")
    drawn = [kind for kind, n in counts.items() for _ in range(n)]
    drawn += ["honest"] * (nodes - len(drawn))
    random.Random(seed).shuffle(drawn)
    return drawn


class Fleet:
    """N simulated nodes against the marketplace at `url` (or `urls`, spread round-robin: several web servers)."""

    def __init__(
        self,
        url: str | Sequence[str],
        operator_tokens: Sequence[str],
        *,
        nodes: int,
        slots: int = 1,
        fail: float = 0.0,
        vanish: float = 0.0,
        wrong: float = 0.0,
        heartbeat_seconds: float = 10.0,
        seed: int = 0,
        per_operator: int = ENROLMENTS_PER_OPERATOR,
        start_call: bool = True,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.url = self.urls[0]
        needed = math.ceil(nodes / per_operator)
        if len(operator_tokens) < needed:
            raise ValueError(f"{nodes} nodes need {needed} operator tokens ({per_operator} enrolments each an hour)")
        self.operator_tokens = list(operator_tokens)
        self.nodes_wanted = nodes
        self.slots = slots
        self.heartbeat_seconds = heartbeat_seconds
        # Without the start call the result starts its leased assignment (one request per assignment, not two).
        self.start_call = start_call
        self.behaviours = behaviours_draw(nodes, fail=fail, vanish=vanish, wrong=wrong, seed=seed)
        self.per_operator = per_operator
        self.capabilities = probe.probe()
        self.counters = Counters()
        self.stopping = threading.Event()
        self.nodes: list[SimNode] = []
        self.tag = uuid.uuid4().hex[:6]

    def enrol(self) -> None:
        """Enrol every node through the API, spreading them over the operators (at most `per_operator` each)."""
        operators = len(self.operator_tokens)
        for i, behaviour in enumerate(self.behaviours):
            token = self.operator_tokens[i % operators]
            url = self.urls[i % len(self.urls)]
            wallet = Wallet.create()
            reply = requests.post(
                f"{url}/api/nodes/enroll/",
                headers={"Authorization": f"Token {token}"},
                json={
                    "name": f"sim-{self.tag}-{i}",
                    "wallet_address": wallet.address,
                    "capabilities": self.capabilities,
                    "slots": self.slots,
                },
                timeout=30,
            )
            if reply.status_code != 201:
                raise RuntimeError(f"enrolling simulated node {i} failed: HTTP {reply.status_code} {reply.text}")
            self.nodes.append(SimNode(self, url, reply.json(), wallet, behaviour))

    def start(self) -> Fleet:
        if not self.nodes:
            self.enrol()
        for node in self.nodes:
            node.start()
        return self

    def accepted(self) -> int:
        """Accepted results of the fleet, as the nodes' last heartbeat replies counted them (valid_count)."""
        return sum(node.valid_count for node in self.nodes)

    def stop(self) -> None:
        self.stopping.set()
        for node in self.nodes:
            for thread in node.threads:
                thread.join(timeout=5)
            node.session.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def progress_line(fleet: Fleet, elapsed: float, accepted_rate: float) -> str:
    c = fleet.counters
    return (
        f"{elapsed:7.1f}s accepted {fleet.accepted():6d} ({accepted_rate:6.1f}/s)  submitted {c.submitted}  "
        f"failed {c.failed}  wrong {c.wrong}  vanished {c.vanished}  refused {c.refused}  errors {c.errors}  "
        f"heartbeats {c.heartbeats}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/nodesim.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="the marketplace's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--operator-token", action="append", required=True, metavar="T",
        help="an operator's API token (`manage.py token NAME --create`); repeat it, one per ten nodes",
    )  # fmt: skip
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes (default 10)")
    parser.add_argument("--slots", type=int, default=1, help="slots per node: assignments held at once (default 1)")
    parser.add_argument("--fail", type=float, default=0.0, help="fraction of nodes that report every task failed")
    parser.add_argument("--vanish", type=float, default=0.0, help="fraction that take a task and disappear")
    parser.add_argument("--wrong", type=float, default=0.0, help="fraction that upload wrong (signed) results")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument(
        "--heartbeat-seconds", type=float, default=10.0,
        help="heartbeat interval (default 10, the agent's; a server with a short NODE_ONLINE_SECONDS needs less)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of which node behaves how")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between progress lines (default 2)")
    parser.add_argument(
        "--no-start", action="store_true",
        help="skip the start call: the result starts its leased assignment (one request per assignment, not two)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    fleet = Fleet(
        args.url.rstrip("/"), args.operator_token, nodes=args.nodes, slots=args.slots, fail=args.fail,
        vanish=args.vanish, wrong=args.wrong, heartbeat_seconds=args.heartbeat_seconds, seed=args.seed,
        start_call=not args.no_start,
    )  # fmt: skip
    began = time.perf_counter()
    fleet.enrol()
    print(f"enrolled {args.nodes} nodes in {time.perf_counter() - began:.1f}s: "
          f"{', '.join(f'{fleet.behaviours.count(b)} {b}' for b in BEHAVIOURS)}", flush=True)  # fmt: skip
    fleet.start()
    began = last_at = time.perf_counter()
    last = 0
    try:
        while not args.duration or time.perf_counter() - began < args.duration:
            time.sleep(args.every)
            now, accepted = time.perf_counter(), fleet.accepted()
            print(progress_line(fleet, now - began, (accepted - last) / (now - last_at)), flush=True)
            last, last_at = accepted, now
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
    elapsed = time.perf_counter() - began
    print(f"done: {fleet.accepted()} accepted in {elapsed:.1f}s ({fleet.accepted() / elapsed:.1f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
