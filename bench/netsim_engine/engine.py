"""The discrete-event loop (heapq): churn, leases, runs, losses, verdicts and the scheduler's passes, for one policy."""

from __future__ import annotations

import gc
import heapq
import random
import time
from collections.abc import Callable
from typing import Any

from marketplace.jobs import kinds

from . import state as st
from .policies import REPLICATION, Plain
from .population import HONEST, HOUR, LAZY, SYBIL_BASE, Network, Node
from .state import (
    EXPIRE,
    EXPIRED,
    FAIL,
    FAILED,
    LEASED,
    OPEN,
    SUBMIT,
    SUBMITTED,
    Assignment,
    Job,
    Stats,
    Task,
    result_of,
)

# The scheduler's batch (jobs.leasing.schedule's limit) and how soon a pass follows the event that asked for one.
SCHEDULE_LIMIT = 1000
PASS_DELAY_S = 1.0
# A shortcut of the simulator's: a pass tries at most this many idle nodes (in order) for one task, and once a task
# finds none, the pass skips the rest of its job (their nodes are blocked from it, or all of one operator). The real
# scheduler tries every node; what it finds differs only when more than this many of the best idle nodes are
# refused, and it would try again at its next run.
SCAN_NODES = 64


class Run:
    """One policy on one network: identical churn and jobs for every policy, its own random draws (same seed)."""

    def __init__(self, net: Network, pol: Plain, progress: Callable[[str], None] | None = None) -> None:
        self.net, self.p, self.pol, self.progress = net, net.params, pol, progress
        self.rng = random.Random(self.p.seed * 7919 + 1)
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.idle: list[tuple[Any, int, int, Node]] = []
        self.pending: list[tuple[int, int, int, Task]] = []
        self.pass_asked = False
        self.next_aid = self.next_uid = 0
        self.limit = kinds.get("render").time_limit_seconds
        self.horizon = self.p.hours * HOUR
        self.end = (self.p.hours + self.p.drain_hours) * HOUR
        self.stats = Stats(pol.name, jobs_total=len(net.jobs))
        self.stats.units_per_hour = [0] * (int(self.p.hours + self.p.drain_hours) + 1)
        self.stats.leases_per_minute = [0] * (int(self.end / 60) + 1)
        self.jobs: list[Job] = []
        for node in net.nodes:
            node.reset()

    # -- plumbing
    def push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj))

    def ask_pass(self, t: float) -> None:
        if not self.pass_asked:
            self.pass_asked = True
            self.push(t + PASS_DELAY_S, st.PASS, None)

    def idle_add(self, node: Node, t: float, ask: bool = True) -> None:
        if node.online and self.pol.room(node) > 0:
            node.idle_ver += 1
            node.heap_ver = node.idle_ver
            node.idle_since = t
            heapq.heappush(self.idle, (self.pol.key(node), node.idle_ver, node.id, node))
            if ask:
                self.ask_pass(t)

    def enqueue(self, task: Task, t: float, ask: bool = True) -> None:
        if not task.queued and task.state == OPEN and task.job.state == OPEN and task.live < task.wanted:
            task.queued = True
            heapq.heappush(self.pending, (task.job.seq, task.index, task.uid, task))
            if ask:
                self.ask_pass(t)

    # -- the loop
    def run(self) -> Stats:
        started = time.perf_counter()
        # Millions of small objects that live for the whole run: the cyclic collector would walk them over and
        # over for nothing (a finished task's containers are dropped by hand instead, see `complete`).
        gc.collect()
        gc.disable()
        try:
            self._loop(started)
        finally:
            gc.enable()
        self.stats.wall_s = time.perf_counter() - started
        return self.stats

    def _loop(self, started: float) -> None:
        for plan in self.net.jobs:
            self.push(plan.arrive, st.ARRIVE, plan)
        flips, fi, nodes = self.net.flips, 0, self.net.nodes
        next_hour = HOUR
        heap = self.heap
        while True:
            t_heap = heap[0][0] if heap else float("inf")
            if fi < len(flips) and flips[fi][0] <= t_heap:
                t, nid, online = flips[fi]
                fi += 1
                self.flip(nodes[nid], online, t)
            elif heap:
                t, _, kind, obj = heapq.heappop(heap)
                if t > self.end:
                    break
                self.handle(kind, obj, t)
            else:
                break
            self.stats.events += 1
            if t >= next_hour:
                self.report_hour(t, started)
                next_hour += HOUR

    def report_hour(self, t: float, started: float) -> None:
        if self.progress is not None:
            queued = sum(1 for *_, task in self.pending if task.queued)
            self.progress(
                f"[{self.pol.name}] hour {t / HOUR:.0f}/{self.end / HOUR:.0f}: {self.stats.units:,} units accepted, "
                f"{self.stats.leases:,} leases, {queued:,} tasks waiting, {time.perf_counter() - started:.0f} s wall"
            )

    def handle(self, kind: int, obj: Any, t: float) -> None:
        if kind == st.PASS:
            self.pass_asked = False
            self.schedule(t)
        elif kind == SUBMIT:
            if obj.state == LEASED:
                self.submit(obj, t)
        elif kind in (FAIL, EXPIRE):
            if obj.state == LEASED:
                self.end_open(obj, FAILED if kind == FAIL else EXPIRED, t)
        elif kind == st.ARRIVE:
            job = Job(obj.seq, t, obj.poster, len(obj.work))
            self.jobs.append(job)
            for index, work in enumerate(obj.work):
                self.next_uid += 1
                task = Task(self.next_uid, job, index, work)
                job.tasks.append(task)
                self.enqueue(task, t)

    def flip(self, node: Node, online: bool, t: float) -> None:
        node.online = online
        if online:
            node.session_end = node.next_flip(t)
            self.idle_add(node, t)
        else:
            node.idle_ver += 1  # out of the idle heap; its running work expires (see lease)

    # -- the scheduler (jobs.leasing.schedule: tasks in job order, each to the first eligible node in order)
    def schedule(self, t: float) -> None:
        pending, idle, pol = self.pending, self.idle, self.pol
        deferred: list[Task] = []
        full: set[int] = set()
        scanned = leased = 0
        while pending and idle and scanned < SCHEDULE_LIMIT:
            task = heapq.heappop(pending)[3]
            task.queued = False
            if task.state != OPEN or task.job.state != OPEN or task.live >= task.wanted:
                continue
            scanned += 1
            if task.job.seq in full:
                deferred.append(task)
                continue
            skipped: list[Node] = []
            retry: list[Node] = []
            before = task.live
            while task.live < task.wanted and len(skipped) + len(retry) < SCAN_NODES:
                node = self.idle_pop()
                if node is None:
                    break
                if not pol.eligible(task, node):
                    skipped.append(node)
                elif node.id in task.lost_nodes:
                    retry.append(node)  # a node that lost the task goes last
                else:
                    self.lease(task, node, t)
                    if pol.room(node) > 0:
                        skipped.append(node)
            for node in retry:
                if task.live < task.wanted and pol.eligible(task, node):
                    self.lease(task, node, t)
                if pol.room(node) > 0:
                    skipped.append(node)
            for node in skipped:
                self.idle_add(node, node.idle_since, ask=False)
            leased += task.live - before
            if task.live < task.wanted:
                deferred.append(task)
                if task.live == before:
                    full.add(task.job.seq)
        for task in deferred:
            self.enqueue(task, t, ask=False)
        if scanned >= SCHEDULE_LIMIT and leased:
            self.ask_pass(t)

    def idle_pop(self) -> Node | None:
        idle = self.idle
        while idle:
            _, ver, _, node = heapq.heappop(idle)
            if ver == node.idle_ver and node.online and self.pol.room(node) > 0:
                node.idle_ver += 1
                return node
        return None

    def lease(self, task: Task, node: Node, t: float) -> None:
        self.next_aid += 1
        first = task.live == 0 and task.wanted == REPLICATION and not task.spot_check
        value = HONEST if node.cheat is None else result_of(task, node, self.next_aid, self.rng, self.p.cheat_prob)
        a = Assignment(self.next_aid, task, node, value, t)
        task.live += 1
        task.holders.append(node.holder)
        task.taken.add(node.id)
        task.open[a.id] = a
        node.busy += 1
        stats = self.stats
        stats.leases += 1
        stats.leases_per_minute[int(t / 60)] += 1
        if first and self.pol.single_replica(node, self.rng.random(), t):
            task.wanted, task.spot_check = 1, True
        run = task.work / node.speed / (self.p.lazy_speedup if value == LAZY else 1.0)
        # What happens to it is drawn now: the node's session end is known (the churn is fixed in advance).
        if run > self.limit:
            done, kind = t + self.limit, FAIL  # the agent kills the runner at the kind's time limit
        elif self.rng.random() < self.p.crash_rate:
            done, kind = t + run * self.rng.random(), FAIL
        else:
            done, kind = t + run, SUBMIT
        if node.session_end < done:
            # The node vanished: no heartbeat renews the lease, which runs out `lease` seconds later.
            done, kind = min(node.session_end + self.pol.lease, t + self.pol.bound), EXPIRE
        self.push(done, kind, a)

    # -- ends of assignments
    def _close(self, a: Assignment, state: int, t: float, free: bool = True) -> None:
        a.state = state
        task, node = a.task, a.node
        del task.open[a.id]
        node.busy -= 1
        self.stats.busy_slot_s += t - a.leased
        if free:
            self.idle_add(node, t)

    def _uncount(self, a: Assignment) -> None:
        task = a.task
        task.live -= 1
        task.holders.remove(a.node.holder)

    def submit(self, a: Assignment, t: float) -> None:
        self._close(a, SUBMITTED, t, free=False)
        self.stats.submitted += 1
        task = a.task
        if task.state != OPEN:
            self._uncount(a)
            a.state = st.CANCELLED  # its task completed or stopped without it: not judged, not paid
            self.stats.late += 1
            self.idle_add(a.node, t)
            return
        task.results[a.id] = a.value
        task.judged[a.id] = a
        self.verify(task, a, t)
        self.idle_add(a.node, t)  # after its verdict, which may move the node in the order

    def end_open(self, a: Assignment, state: int, t: float) -> None:
        """An attempt lost (expired, failed) or cancelled: counters settled as `dispatch.assignment_end` does."""
        self._close(a, state, t)
        self._uncount(a)
        task, node = a.task, a.node
        if state == st.CANCELLED:
            self.stats.cancelled += 1
            return
        if state == EXPIRED:
            self.stats.expired += 1
            task.taken.discard(node.id)  # an expired replica may be taken again (ASSIGNMENT_RETAKEABLE)
            task.lost_nodes.add(node.id)
        else:
            self.stats.failed += 1
        if task.spot_check:
            task.spot_check, task.wanted = False, REPLICATION  # dispatch._spot_check_undo
        self.pol.lost(node, task.job)
        task.lost_attempts += 1
        if task.state != OPEN:
            return
        task.lost_operators.add(node.operator)
        if self.pol.task_fails(task):
            self.job_fail(task.job, t)
        else:
            self.enqueue(task, t)

    # -- verdicts (jobs.verification: spot check, or kinds.decide with its quorum)
    def verify(self, task: Task, a: Assignment, t: float) -> None:
        job, results = task.job, task.results
        if task.spot_check:
            self.stats.spot_checks += 1
            self.stats.spot_work_replicas += 1.0 / self.p.chunk_images
            caught = a.value != HONEST and (a.value < SYBIL_BASE or self.rng.random() < 1.0 / self.p.chunk_images)
            if not caught:
                self.accept(a, t)
                self.complete(task, t)
                return
            self.stats.spot_caught += 1
            self.reject(a, t)
            task.spot_check, task.wanted = False, REPLICATION  # back to full replication on other nodes
            self.enqueue(task, t)
            return
        verdict = kinds.decide(results, quorum=self.pol.quorum())
        if verdict.needs_another_replica:
            if not task.open and len(results) >= task.wanted:
                if self.pol.exhausted(task.wanted):
                    self.job_fail(job, t)
                    return
                task.wanted += 1
                self.enqueue(task, t)
            return
        judged = task.judged
        for aid in verdict.accepted:
            if judged[aid].state == SUBMITTED:
                self.accept(judged[aid], t)
        for aid in verdict.rejected:
            self.reject(judged[aid], t)
        self.complete(task, t)

    def accept(self, a: Assignment, t: float) -> None:
        a.state = st.ACCEPTED
        self.stats.accepted_replicas += 1
        self.pol.accepted(a.node, a.task.job.poster, t)
        self._refresh(a.node, t)

    def reject(self, a: Assignment, t: float) -> None:
        a.state = st.REJECTED
        self.stats.rejected += 1
        a.task.results.pop(a.id, None)
        a.task.judged.pop(a.id, None)
        self._uncount(a)
        self.pol.wrong(a.node, a.task.job, t)
        self._refresh(a.node, t)

    def _refresh(self, node: Node, t: float) -> None:
        # A node waiting for work whose order changed takes its new place (the old heap entry goes stale).
        if self.pol.reorders and node.heap_ver == node.idle_ver:
            self.idle_add(node, node.idle_since, ask=False)

    def complete(self, task: Task, t: float) -> None:
        task.state = st.DONE
        winner = next(a for a in task.judged.values() if a.state == st.ACCEPTED)
        stats = self.stats
        stats.units += 1
        if winner.value != HONEST:
            stats.wrong_units += 1
            cheat = "lazy" if winner.value == LAZY else "random" if winner.value < 0 else "sybil"
            stats.wrong_by[cheat] = stats.wrong_by.get(cheat, 0) + 1
        stats.units_per_hour[int(t / HOUR)] += 1
        if t <= self.horizon:
            stats.units_in_horizon += 1
        for a in list(task.open.values()):
            self.end_open(a, st.CANCELLED, t)  # surplus replicas stop
        # Nothing of a completed task is read again (it has no open replica left to report late): its containers go,
        # and a completed job's tasks with them, so memory stays flat (the cyclic collector is off, see `run`).
        task.results = task.judged = st.GONE
        task.holders, task.taken, task.lost_nodes = st.GONE_LIST, st.GONE_SET, st.GONE_SET
        job = task.job
        job.done += 1
        if job.done == job.size and job.state == OPEN:
            job.state, job.finished = st.DONE, t
            stats.jobs_done.append(t - job.arrive)
            job.tasks = []

    def job_fail(self, job: Job, t: float) -> None:
        """jobs.dispatch.task_fail → work_stop: the job fails; its unfinished tasks and open replicas stop."""
        if job.state != OPEN:
            return
        job.state = st.STOPPED
        self.stats.jobs_failed += 1
        for task in job.tasks:
            if task.state == OPEN:
                task.state = st.STOPPED
                for a in list(task.open.values()):
                    self.end_open(a, st.CANCELLED, t)
                # Submitted, never judged (no other replica will come): cancelled unpaid, as _judge_stopped does.
                self.stats.late += sum(a.state == SUBMITTED for a in task.judged.values())
                task.judged, task.results = {}, {}
        job.tasks = []
