"""The simulated volunteer network: nodes, operators, networks, cheaters, churn and the jobs posted to it."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from marketplace.jobs import diversity

HOUR = 3600.0

# What a cheater's result is: an honest result is HONEST; a lazy one is LAZY for everyone (a cheap render at a
# quarter of the samples is deterministic, so two lazy nodes agree with each other); a random one is unique
# (negative); a colluding operator's is SYBIL_BASE + its operator id (its nodes agree with each other).
HONEST = 0
LAZY = 1
SYBIL_BASE = 2
CHEATS = ("lazy", "random", "sybil")


@dataclass(frozen=True)
class Params:
    """The network and workload; defaults are the headline run's (sources in docs/benchmarks.md, "Network
    simulator")."""

    nodes: int = 100_000
    cheaters: float = 0.05
    hours: float = 2.0
    drain_hours: float = 0.5
    seed: int = 1
    # Online sessions: Weibull (shape < 1: many short sessions, a long tail of days), as Javadi et al. fit
    # SETI@home hosts' availability intervals; offline gaps log-normal, as they fit unavailability.
    on_shape: float = 0.5
    on_scale_hours: float = 3.0
    off_median_hours: float = 2.0
    off_sigma: float = 1.5
    min_session_s: float = 60.0
    # Speeds in reference seconds of work per second: CPUs 0.3-3, GPUs 30-300 (three orders of magnitude).
    gpu_share: float = 0.05
    cpu_speed: tuple[float, float] = (0.3, 3.0)
    gpu_speed: tuple[float, float] = (30.0, 300.0)
    # Runner crashes: the share of assignments that fail on their own (churn and time limits add to it).
    crash_rate: float = 0.03
    # Work: a job's tasks take a log-normal time on a speed-1 node (median 600 s), ±10 % between its tasks.
    work_median_s: float = 600.0
    work_sigma: float = 0.5
    tasks_per_job: tuple[int, int] = (20, 400)
    # Offered load, as a share of what the network could accept at plain 2× replication if no attempt were lost.
    load: float = 1.0
    posters: int = 200
    # Cheaters: a random cheater is wrong on this share of its results; a colluding operator's node gambles on this
    # share once it has a trusted-looking streak, and always when it holds two replicas of a task.
    cheat_prob: float = 0.5
    lazy_speedup: float = 4.0
    sybil_farm: int = 20
    # Images per render chunk: a spot check re-renders one, so a colluder that fakes one image escapes it 7 in 8.
    chunk_images: int = 8


class Node:
    """A node's static facts and its mutable state in one run (reset per policy)."""

    __slots__ = (
        "busy",
        "cheat",
        "consecutive_valid",
        "heap_ver",
        "holder",
        "id",
        "idle_since",
        "idle_ver",
        "invalid_count",
        "online",
        "operator",
        "proven",
        "score",
        "score_t",
        "session_end",
        "sessions",
        "slots",
        "speed",
        "valid_count",
    )  # fmt: skip

    def __init__(self, nid: int, operator: int, address: str, speed: float, slots: int, cheat: str | None) -> None:
        self.id = nid
        self.operator = operator
        self.holder = diversity.Holder(operator_id=operator, network=diversity.network_of(address))
        self.speed = speed
        self.slots = slots
        self.cheat = cheat
        # Times at which the node's state flips, starting offline at 0 (an even index turns it on).
        self.sessions: list[float] = []
        self.reset()

    def reset(self) -> None:
        self.online = False
        self.session_end = 0.0
        self.busy = 0
        self.valid_count = 0
        self.proven = False
        self.invalid_count = 0
        self.consecutive_valid = 0
        self.score = 0.0
        self.score_t = 0.0
        self.idle_ver = 0
        # The idle_ver of its entry in the idle heap: equal to idle_ver while it waits there.
        self.heap_ver = -1
        self.idle_since = 0.0

    def next_flip(self, t: float) -> float:
        """The first state change after `t` (infinity when none before the end)."""
        i = bisect.bisect_right(self.sessions, t)
        return self.sessions[i] if i < len(self.sessions) else math.inf


@dataclass(frozen=True)
class JobPlan:
    seq: int
    arrive: float
    poster: int
    work: tuple[float, ...]


@dataclass
class Network:
    params: Params
    nodes: list[Node]
    # (time, node index, online) for every state change, in time order.
    flips: list[tuple[float, int, bool]]
    jobs: list[JobPlan]
    availability: float
    capacity_units_per_s: float
    operators: int


def _address(rng: random.Random, net: int) -> str:
    # Public space from 11.0.0.0 up: each `net` is one /24, so REPLICA_DISTINCT_NETWORKS groups it.
    return f"{11 + net // 65536}.{(net // 256) % 256}.{net % 256}.{rng.randrange(1, 255)}"


def _sessions(rng: random.Random, p: Params, end: float, on_at_start: bool) -> list[float]:
    """Alternating on/off periods over [0, end]: flips at the returned times (the node starts offline)."""
    flips: list[float] = [0.0] if on_at_start else []
    t, online = 0.0, on_at_start
    while t < end:
        if online:
            span = rng.weibullvariate(p.on_scale_hours * HOUR, p.on_shape)
        else:
            span = rng.lognormvariate(math.log(p.off_median_hours * HOUR), p.off_sigma)
        t += max(p.min_session_s, span)
        flips.append(t)
        online = not online
    return flips


def network_build(p: Params) -> Network:
    """Nodes (operators, networks, speeds, cheaters), their churn over the whole run, and the jobs, from `p.seed`."""
    rng = random.Random(p.seed)
    end = (p.hours + p.drain_hours) * HOUR
    mean_on = p.on_scale_hours * HOUR * math.gamma(1 + 1 / p.on_shape)
    mean_off = p.off_median_hours * HOUR * math.exp(p.off_sigma**2 / 2)
    availability = mean_on / (mean_on + mean_off)
    nodes: list[Node] = []
    operator = net = 0

    def speed(gpu: bool) -> float:
        low, high = p.gpu_speed if gpu else p.cpu_speed
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    def add(operator: int, net: int, cheat: str | None, gpu: bool, sessions: list[float] | None = None) -> Node:
        node = Node(len(nodes), operator, _address(rng, net), speed(gpu), rng.choice((1, 2)) if gpu else 1, cheat)
        node.sessions = sessions if sessions is not None else _sessions(rng, p, end, rng.random() < availability)
        nodes.append(node)
        return node

    cheaters = round(p.nodes * p.cheaters)
    for i in range(cheaters):
        cheat = CHEATS[i % 3]
        if cheat == "sybil":
            continue
        operator, net = operator + 1, net + 1
        add(operator, net, cheat, gpu=False)
    sybils = cheaters - len(nodes)
    while sybils > 0:
        # A farm: one operator's VMs, started and stopped together, spread over /24s of 5 nodes each to get past
        # the network rule (the operator rule still sees them).
        operator += 1
        shared = _sessions(rng, p, end, rng.random() < availability)
        farm_speed = speed(gpu=False)
        for k in range(min(p.sybil_farm, sybils)):
            if k % 5 == 0:
                net += 1
            add(operator, net, "sybil", gpu=False, sessions=shared).speed = farm_speed
            sybils -= 1
    while len(nodes) < p.nodes:
        # Honest operators: most run one machine at home; some a few; a few a fleet (a lab), 16 nodes per /24.
        operator, net = operator + 1, net + 1
        draw = rng.random()
        count = 1 if draw < 0.8 else rng.randint(2, 4) if draw < 0.97 else rng.randint(10, 50)
        for k in range(min(count, p.nodes - len(nodes))):
            if k and k % 16 == 0:
                net += 1
            add(operator, net, None, gpu=rng.random() < p.gpu_share)
    flips = sorted(
        (t, node.id, i % 2 == 0) for node in nodes for i, t in enumerate(node.sessions) if t < end
    )  # fmt: skip
    mean_tasks = (p.tasks_per_job[1] - p.tasks_per_job[0]) / math.log(p.tasks_per_job[1] / p.tasks_per_job[0])
    mean_work = p.work_median_s * math.exp(p.work_sigma**2 / 2)
    compute = availability * sum(n.speed * n.slots for n in nodes)
    capacity = compute / mean_work / 2
    rate = p.load * capacity / mean_tasks
    jobs: list[JobPlan] = []
    t = rng.expovariate(rate)
    while t < p.hours * HOUR:
        low, high = p.tasks_per_job
        count = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        typical = rng.lognormvariate(math.log(p.work_median_s), p.work_sigma)
        work = tuple(typical * rng.uniform(0.9, 1.1) for _ in range(count))
        jobs.append(JobPlan(seq=len(jobs), arrive=t, poster=operator + 1 + rng.randrange(p.posters), work=work))
        t += rng.expovariate(rate)
    return Network(p, nodes, flips, jobs, availability, capacity, operator)
