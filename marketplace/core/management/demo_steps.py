"""The marketplace side of `manage.py demo`'s story: its users and nodes, its jobs' progress, their settlement."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import load_deployment
from contracts.sender import Sender
from contracts.units import tokens_format
from marketplace.celery import use_broker
from marketplace.core.localstack import LocalStack, LocalStackError, wait_until
from marketplace.core.management.demo_checks import chain_matches_database
from marketplace.core.ports import free_port, port_is_free
from marketplace.core.processes import Supervisor
from marketplace.federated.models import RoundState, TrainData, TrainRound
from marketplace.jobs.models import JOB_TERMINAL, Assignment, AssignmentState, Job, JobOutput, JobState
from marketplace.nodes.models import Node
from marketplace.nodes.services import node_deactivate
from marketplace.payments.models import EntryKind, LedgerEntry, Payout, PayoutState
from marketplace.payments.services import escrow_key, reconcile

Say = Callable[[str], None]

DEMO_AGENTS = 2
DEMO_POSTER = "demo-poster"
DEMO_OPERATOR = "demo-operator"
# Each demo agent has its own operator: replicas of one task go to nodes of distinct operators.
DEMO_OPERATORS = tuple(DEMO_OPERATOR if n == 1 else f"{DEMO_OPERATOR}-{n}" for n in range(1, DEMO_AGENTS + 1))
# The demo users log in to the dashboard with this password (local demo only).
DEMO_PASSWORD = "hashwork-demo"  # noqa: S105 - printed by the demo for its local, throwaway users


def demo_start(stack: LocalStack, *, port: int, timeout: float, say: Say) -> tuple[str, str, dict[str, Any]]:
    """Redis, the chain and its contracts, the database, the services and DEMO_AGENTS fresh nodes; returns the base
    URL, the demo poster's API token and the figures of it all."""
    if settings.REDIS_IS_EMBEDDED:
        server, started = stack.redis_start()
        how = "started" if started else "reusing the one already running,"
        say(f"Redis: embedded Valkey {how} on 127.0.0.1:{server.port} (data in {server.directory})")
        # This process talks to Redis too (the broker, ACL users of replaced demo nodes): point it there.
        settings.REDIS_URL = server.url
    else:
        say(f"Redis: {settings.REDIS_URL.split('@')[-1]} (REDIS_URL)")
        stack.env["REDIS_URL"] = settings.REDIS_URL
    use_broker(settings.REDIS_URL)
    call_command("migrate", interactive=False, verbosity=0)
    if settings.ETH_RPC_URL:
        stack.env["ETH_RPC_URL"] = settings.ETH_RPC_URL
    else:  # this process funds and settles too (`chain fund-dev` in-process): it reads the settings
        settings.ETH_RPC_URL = stack.chain_start().url
    chain_matches_database(stack)
    dep = stack.contracts_ensure()
    rpc = "Anvil" if stack.chain else settings.ETH_RPC_URL
    say(f"Chain: {rpc} (chain {dep.chain_id}), escrow {dep.escrow}")
    if not port_is_free(port):
        port, taken = free_port(), port
        say(f"Port {taken} is taken; using {port} instead (choose one with --port).")
    engine, db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1], settings.DATABASES["default"]["NAME"]
    say(f"Database: {engine} {db}")
    base_url = stack.start_services(port=port, web_workers=2)
    say(f"Starting the web server on {base_url}, the marketplace and settlement workers and beat…")
    stack.web_wait(base_url, timeout=timeout)
    token = demo_user(DEMO_POSTER)
    for old in Node.objects.filter(operator__username__in=DEMO_OPERATORS, is_active=True):
        node_deactivate(node_id=old.id, reason="replaced by a new demo run")
    run_tag = uuid.uuid4().hex[:6]
    nodes = [f"demo-{n}-{run_tag}" for n in range(1, DEMO_AGENTS + 1)]
    for n, (name, operator) in enumerate(zip(nodes, DEMO_OPERATORS, strict=True), start=1):
        config = settings.VAR_DIR / "agents" / f"agent-{n}.json"
        operator_token = demo_user(operator)
        stack.agent_enroll(config, base_url=base_url, token=operator_token, name=name, force=True, timeout=timeout)
        stack.agent_start(f"agent-{n}", config, heartbeat_seconds=2)
    say(f"Enrolled and started {DEMO_AGENTS} local nodes (nodeagent enroll + nodeagent run).")
    return (
        base_url,
        token,
        {
            "redis": {"embedded": settings.REDIS_IS_EMBEDDED, "started": stack.redis is not None},
            "chain": {"rpc": rpc, "chain_id": dep.chain_id, "escrow": dep.escrow},
            "database": {"engine": engine, "name": str(db)},
            "port": port,
            "nodes": nodes,
        },
    )


def demo_user(username: str) -> str:
    """The demo user `username` (created, its password reset to DEMO_PASSWORD); returns its API token."""
    user, created = get_user_model().objects.get_or_create(
        username=username, defaults={"email": f"{username}@demo.hashwork.local"}
    )
    if created or not user.check_password(DEMO_PASSWORD):
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


def job_fund(job_id: UUID, supervisor: Supervisor, timeout: float, say: Say) -> dict[str, Any]:
    """Fund the job in the escrow from the dev poster's wallet, 2 HWC beyond what it needs (`chain fund-dev`), and
    wait until the marketplace has seen the deposit and split the job; returns the figures of that."""
    out = io.StringIO()
    call_command("chain", "fund-dev", str(job_id), "--extra", "2", stdout=out)
    say(out.getvalue().strip())
    w3 = connect(settings.ETH_RPC_URL)
    escrow = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id).escrow_contract(w3)
    say("Waiting for the marketplace to see the deposit and split the job into tasks…")
    wait_until(
        supervisor,
        lambda: Job.objects.get(id=job_id).state not in (JobState.DRAFT, JobState.FUNDED),
        timeout=timeout,
        failure=f"The worker did not split the job within {timeout:.0f}s; see var/logs/worker.log.",
    )
    job = Job.objects.get(id=job_id)
    tasks = job.tasks.count()
    say(f"The worker split the job into {tasks} tasks; it is now {job.state}.")
    return {"funded": escrow.job_of(escrow_key(job_id)).funded, "tasks_split": tasks, "state_after_split": job.state}


@dataclass(frozen=True)
class Chunks:
    """A render job's progress: tasks verified and running, replicas accepted."""

    verified: int
    running: int
    accepted: int
    total: int

    def line(self) -> str:
        return (
            f"  {self.verified}/{self.total} chunks verified, {self.running} running, {self.accepted} replicas accepted"
        )


def render_follow(job_id: UUID, supervisor: Supervisor, timeout: float, say: Say, *, tty: bool) -> Chunks:
    """Show the job's progress each time it changes until it is completed, and return the last; LocalStackError
    if it ends otherwise or makes no progress for `timeout` s."""
    last: Chunks | None = None
    last_change = time.monotonic()
    bar = Progress(say, tty=tty, total=Job.objects.get(id=job_id).task_count, desc="chunks verified", unit="chunk")
    while True:
        supervisor.check()
        job = Job.objects.get(id=job_id)
        states = list(job.tasks.values_list("state", flat=True))
        accepted = Assignment.objects.filter(task__job=job, state=AssignmentState.ACCEPTED).count()
        now = Chunks(states.count("completed"), states.count("running"), accepted, job.task_count)
        if now != last:
            bar.show(now.line(), done=now.verified, postfix=f"{now.running} running")
            last, last_change = now, time.monotonic()
        if job.state == JobState.COMPLETED:
            bar.close()
            return now
        if job.state in JOB_TERMINAL:
            raise LocalStackError(f"The sample job ended {job.state}: {job.state_reason}")
        if time.monotonic() - last_change > timeout:
            raise LocalStackError(f"The sample job made no progress for {timeout:.0f}s; see {supervisor.log_dir}.")
        time.sleep(0.5)


def replicas_per_node(job_id: UUID) -> dict[str, int]:
    """Accepted replicas of the job per node name."""
    accepted = Assignment.objects.filter(task__job_id=job_id, state=AssignmentState.ACCEPTED)
    return dict(sorted(Counter(accepted.values_list("node__name", flat=True)).items()))


@dataclass(frozen=True)
class TrainStarted:
    """The train job's data, as the marketplace split it."""

    classes: int
    train_samples: int
    shards: int
    val_samples: int
    untrained_accuracy: float

    def line(self) -> str:
        return (
            f"  {self.classes} classes, {self.train_samples} training crops in {self.shards} shards, "
            f"{self.val_samples} held out; untrained accuracy {self.untrained_accuracy:.1%}"
        )


@dataclass(frozen=True)
class RoundClosed:
    """One closed federated round (`round` counts from 1)."""

    round: int
    accepted: int
    accuracy: float
    loss: float
    kib_uploaded: float
    seconds: float

    def line(self) -> str:
        return (
            f"  round {self.round}: {self.accepted} updates accepted, held-out accuracy {self.accuracy:.1%} "
            f"(loss {self.loss:.3f}), {self.kib_uploaded:.0f} KiB uploaded, {self.seconds:.0f}s"
        )


def train_follow(
    job_id: UUID, supervisor: Supervisor, timeout: float, say: Say, *, tty: bool, rounds: int, round_deadline: float
) -> tuple[TrainStarted | None, list[RoundClosed]]:
    """Show the job's data once it is split, then each round as it closes, until the job is completed."""
    started: TrainStarted | None = None
    closed: list[RoundClosed] = []
    last_change = time.monotonic()
    bar = Progress(say, tty=tty, total=rounds, desc="rounds trained", unit="round")
    while True:
        supervisor.check()
        data = TrainData.objects.filter(job_id=job_id).first()
        if started is None and data is not None:
            started = TrainStarted(
                len(data.classes), data.train_samples, len(data.shards), data.val_samples, data.baseline["accuracy"]
            )
            say(started.line())
        for rnd in TrainRound.objects.filter(job_id=job_id, state=RoundState.CLOSED, index__gte=len(closed)):
            m = rnd.metrics
            up = sum(m.get("bytes_up", {}).values())
            closed.append(
                RoundClosed(rnd.index + 1, m["accepted"], m["accuracy"], m["loss"], up / 1024, m["wall_seconds"])
            )
            bar.show(closed[-1].line(), done=rnd.index + 1, keep=True)
            last_change = time.monotonic()
        job = Job.objects.get(id=job_id)
        if job.state == JobState.COMPLETED:
            bar.close()
            return started, closed
        if job.state in JOB_TERMINAL:
            raise LocalStackError(f"The train job ended {job.state}: {job.state_reason}")
        # A round may rightly take up to its deadline; stalling is twice that without a closed round.
        if time.monotonic() - last_change > max(timeout, round_deadline * 2):
            raise LocalStackError(f"The train job made no progress for {timeout:.0f}s; see {supervisor.log_dir}.")
        time.sleep(0.5)


def train_outcome(job_id: UUID) -> tuple[float, str]:
    """The completed train job's final held-out accuracy and the reason it ended."""
    last = TrainRound.objects.filter(job_id=job_id).order_by("-index").first()
    assert last is not None, f"train job {job_id} completed without rounds"
    return float(last.metrics["accuracy"]), Job.objects.get(id=job_id).state_reason


@dataclass
class Settlement:
    """Where a finished job's tokens went; credits are the payees' escrow balances after it (all jobs so far)."""

    payouts: int
    release_txs: list[str]
    paid: int
    poster: str
    refunded: int
    node_credits: dict[str, tuple[str, int]] = field(default_factory=dict)
    treasury: str = ""
    treasury_credit: int = 0
    mismatches: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The story's account of it: the payouts, then each party's balance."""
        txs = ", ".join(self.release_txs)
        return [
            f"Paid {self.payouts} replicas on chain in {len(self.release_txs)} release transaction(s): {txs}",
            f"  poster {self.poster}: refunded {tokens_format(self.refunded)} HWC",
            *(
                f"  node {name} {wallet}: credited {tokens_format(credit)} HWC"
                for name, (wallet, credit) in self.node_credits.items()
            ),
            f"  treasury {self.treasury}: {tokens_format(self.treasury_credit)} HWC in fees",
        ]


def job_settle(job_id: UUID, supervisor: Supervisor, timeout: float, say: Say) -> Settlement:
    """Wait until the settlement worker has paid every accepted replica and closed the job in the escrow, refund
    the poster's rest and show where every token went; then reconcile the ledger with the chain once the refund is
    in the ledger (the caller reports the mismatches)."""
    w3 = connect(settings.ETH_RPC_URL)
    dep = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
    escrow = dep.escrow_contract(w3)
    wait_until(
        supervisor,
        lambda: (
            Payout.objects.filter(job_id=job_id).exists()
            and not Payout.objects.filter(job_id=job_id).exclude(state=PayoutState.SETTLED).exists()
            and escrow.job_of(escrow_key(job_id)).closed
        ),
        timeout=timeout,
        failure=f"Settlement did not finish within {timeout:.0f}s; see var/logs/settlement.log.",
    )
    payouts = Payout.objects.filter(job_id=job_id)
    poster = Sender(w3, devchain.dev_keys(2)[1])
    before = dep.token_contract(w3).balance_of(poster.address)
    remaining = escrow.job_of(escrow_key(job_id)).remaining
    if remaining:
        dep.escrow_contract(w3, poster).refund(escrow_key(job_id))
    settlement = Settlement(
        payouts=payouts.count(),
        release_txs=sorted({p.tx_hash for p in payouts}),
        paid=sum(int(p.amount) for p in payouts),
        poster=poster.address,
        refunded=dep.token_contract(w3).balance_of(poster.address) - before,
        treasury=dep.treasury,
        treasury_credit=escrow.credit_of(dep.treasury),
    )
    for node in Node.objects.filter(payouts__job_id=job_id).distinct():
        wallet = w3.to_checksum_address(node.wallet_address)
        settlement.node_credits[node.name] = (wallet, escrow.credit_of(wallet))
    for line in settlement.lines():
        say(line)
    # The chain reader (beat, every 2 s) records the refund in the ledger; reconcile once it has.
    wait_until(
        supervisor,
        lambda: not remaining or LedgerEntry.objects.filter(job_id=job_id, kind=EntryKind.REFUND).exists(),
        timeout=timeout,
        failure="The refund never reached the ledger; see var/logs/worker.log.",
    )
    settlement.mismatches = [str(m) for m in reconcile(w3=w3, escrow=escrow, from_block=dep.block_number)]
    return settlement


def dataset_wait(job_id: UUID, supervisor: Supervisor, timeout: float) -> dict[str, Any]:
    """Wait until the render job's dataset is merged; returns its summary (images, annotations…)."""
    wait_until(
        supervisor,
        JobOutput.objects.filter(job_id=job_id).exists,
        timeout=timeout,
        failure=f"The dataset was not merged within {timeout:.0f}s; see var/logs/worker.log.",
    )
    summary: dict[str, Any] = JobOutput.objects.get(job_id=job_id).summary
    return summary


def preview_draw(dataset: Path, preview: Path) -> bool:
    """Draw the dataset's first image with its labels (`python -m synthetic show`); False if that failed."""
    shown = subprocess.run(
        [sys.executable, "-m", "synthetic", "show", str(dataset), "--image", "0", "--out", str(preview)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return shown.returncode == 0


class Progress:
    """A progress bar on a terminal; elsewhere (logs, tests) a printed line per change."""

    def __init__(self, say: Say, *, tty: bool, total: int, desc: str, unit: str) -> None:
        self.say = say
        self.bar: Any = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stdout, leave=True)

    def show(self, line: str, *, done: int, postfix: str | None = None, keep: bool = False) -> None:
        """`line` is the change in words; on a bar, `done` moves it, `postfix` is shown beside it and `keep`
        prints the line above it too."""
        if self.bar is None:
            self.say(line)
            return
        if keep:
            self.bar.write(line)
        self.bar.update(done - self.bar.n)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
