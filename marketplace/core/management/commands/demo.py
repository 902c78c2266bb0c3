"""`python manage.py demo`: run the marketplace locally on embedded defaults and post a sample job."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import deploy, load_deployment
from contracts.errors import ChainError
from contracts.sender import Sender
from marketplace.celery import use_broker
from marketplace.core import embedded_redis
from marketplace.core.processes import ChildDied, Supervisor
from marketplace.core.queues import MARKETPLACE_QUEUES, Queue
from marketplace.jobs.models import JOB_TERMINAL, Assignment, AssignmentState, Job, JobOutput, JobState
from marketplace.nodes.models import Node
from marketplace.nodes.services import node_deactivate
from marketplace.payments.models import EntryKind, LedgerEntry, Payout, PayoutState
from marketplace.payments.services import reconcile

DEMO_POSTER = "demo-poster"
DEMO_OPERATOR = "demo-operator"
DEMO_AGENTS = 2
# The demo users log in to the dashboard with this password (local demo only).
DEMO_PASSWORD = "hashwork-demo"  # noqa: S105 - printed by the demo for its local, throwaway users
# The main job: a small labeled dataset of products on a shelf, rendered in 3 chunks on the two local nodes.
SAMPLE_JOB: dict[str, Any] = {
    "kind": "render",
    "spec": {
        "catalog": [
            {"kind": "carton", "category": "cereal", "size_m": {"width": [0.15, 0.25], "height": [0.2, 0.3],
             "depth": [0.05, 0.08]}, "palette": ["#d62828", "#f7f7f7", "#003049"]},
            {"kind": "bottle", "category": "water", "size_m": {"width": [0.06, 0.09], "height": [0.2, 0.3]},
             "palette": ["#0077b6", "#ffffff"]},
            {"kind": "can", "category": "soda", "size_m": {"width": [0.06, 0.07], "height": [0.11, 0.13]},
             "palette": ["#e63946", "#ffffff"]},
            {"kind": "jar", "category": "jam", "size_m": {"width": [0.07, 0.09], "height": [0.09, 0.12]},
             "palette": ["#6a040f", "#ffba08"]},
            {"kind": "pouch", "category": "chips", "size_m": {"width": [0.12, 0.18], "height": [0.18, 0.25],
             "depth": [0.03, 0.05]}, "palette": ["#ffb703", "#023047"]},
        ],
        "scene": {"shelf": {"rows": [2, 3], "width_m": 0.9}},
        "output": {"resolution": [160, 160], "samples": 8},
        "seed": 2026,
        "images": 12,
        "chunk_size": 4,
    },
    "price_per_replica": str(10**18),
    "replication": 2,
}  # fmt: skip


# Then a train job on that dataset: a small CNN classifying the product crops, in federated rounds on the two nodes.
TRAIN_SPEC: dict[str, Any] = {
    "model": "smallcnn",
    "image_size": 24,
    "rounds": 4,
    "participants": 2,
    "local_steps": 40,
    "batch_size": 16,
    "learning_rate": 0.05,
    "compression": {"name": "int8"},
    "aggregation": "fedavg",
    "round_deadline_seconds": 120,
    "seed": 2026,
}


class _Stop(Exception):
    """SIGTERM asks the demo to stop, like Ctrl-C."""


def _wait(supervisor: Supervisor, condition: Callable[[], bool], *, timeout: float, failure: str) -> None:
    """Poll `condition` until it holds, failing with `failure` after `timeout` s or as soon as a process dies."""
    deadline = time.monotonic() + timeout
    while not condition():
        supervisor.check()
        if time.monotonic() > deadline:
            raise CommandError(failure)
        time.sleep(0.2)


def _tokens(base_units: int) -> str:
    whole, fraction = divmod(base_units, 10**18)
    return f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(url: str, *, token: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    data = None
    if token:
        headers["Authorization"] = f"Token {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own local server
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Command(BaseCommand):
    help = (
        "Run Hashwork locally on embedded defaults: start the embedded Redis (unless REDIS_URL is set), the web "
        "server, a marketplace Celery worker and beat; enrol and start two local node agents; post a sample "
        "render job (a small labeled dataset) through the API as a demo poster, fund it in the escrow on a local "
        "Anvil chain (or ETH_RPC_URL's), follow it until every task is verified and paid, refund the poster and "
        "print the balances; then a train job on its dataset, round by round, the same way; print the URL, token "
        "and job ids. Runs until Ctrl-C (with --headless, exits 0 once "
        "the job has completed), then stops every process it started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--headless", action="store_true", help="Exit 0 once the sample jobs have completed.")
        parser.add_argument(
            "--no-train", action="store_true", help="Stop after the render job (skip the train job on its dataset)."
        )
        parser.add_argument(
            "--port",
            type=int,
            default=8000,
            help="Web server port (default 8000; a free one if it is taken).",
        )
        parser.add_argument(
            "--timeout", type=float, default=120.0, help="Seconds to wait for each step before giving up."
        )

    def say(self, message: str, style: Any = None) -> None:
        self.stdout.write(style(message) if style else message)
        self.stdout.flush()

    def handle(self, *args: Any, headless: bool, no_train: bool, port: int, timeout: float, **options: Any) -> None:
        if not 1 <= port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port (1-65535).")
        if timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds.")
        var_dir: Path = settings.VAR_DIR
        supervisor = Supervisor(var_dir / "logs")
        started_redis = False
        self.devchain: devchain.DevChain | None = None
        self.totals = {"paid": 0, "refunded": 0}

        def on_sigterm(signum: int, frame: Any) -> None:
            raise _Stop

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        # The demo speaks for itself on stdout; the services' own logs go to var/logs/.
        logging.getLogger("marketplace").setLevel(logging.WARNING)
        try:
            redis_url, started_redis = self._redis(var_dir)
            self._chain(var_dir)
            call_command("migrate", interactive=False, verbosity=0)
            base_url = self._start_processes(supervisor, redis_url=redis_url, port=port, timeout=timeout)
            token = self._demo_user(DEMO_POSTER)
            self._start_agents(supervisor, base_url=base_url, timeout=timeout)
            job_id = self._post_sample_job(base_url, token)
            self._fund_and_wait(job_id, supervisor, timeout)
            self._follow(job_id, supervisor, timeout)
            self._settle_and_refund(job_id, supervisor, timeout)
            self._dataset(base_url, token, job_id, supervisor, timeout)
            train_id, accuracy = None, None
            if not no_train:
                train_id = self._post_train_job(base_url, token, job_id)
                self._fund_and_wait(train_id, supervisor, timeout)
                accuracy = self._follow_train(train_id, supervisor, timeout)
                self._settle_and_refund(train_id, supervisor, timeout)
                self._model(base_url, token, train_id)
            self.say("")
            self.say(f"  Dashboard    {base_url}/  (API docs: {base_url}/api/docs/)", self.style.SUCCESS)
            self.say(
                f"  Log in as    {DEMO_POSTER} / {DEMO_PASSWORD} (jobs) or {DEMO_OPERATOR} / {DEMO_PASSWORD} (nodes)",
                self.style.SUCCESS,
            )
            self.say(f"  API token    {token}   (user {DEMO_POSTER})", self.style.SUCCESS)
            self.say(f"  Render job   {base_url}/jobs/{job_id}/", self.style.SUCCESS)
            if train_id is not None:
                self.say(f"  Train job    {base_url}/jobs/{train_id}/", self.style.SUCCESS)
            self.say(f"  Try:  curl -H 'Authorization: Token {token}' {base_url}/api/jobs/{job_id}/")
            self.say(f"  Logs: {supervisor.log_dir}")
            if headless:
                trained = f" and a model trained (held-out accuracy {accuracy:.1%})" if accuracy is not None else ""
                self.say(f"Headless demo finished: a dataset rendered{trained} on two local nodes, verified and paid.")
                images = SAMPLE_JOB["spec"]["images"]
                self.say(
                    f"Summary: {images} images rendered"
                    + (f", held-out accuracy {accuracy:.1%}" if accuracy is not None else "")
                    + f", {_tokens(self.totals['paid'])} HWC paid to the nodes, "
                    f"{_tokens(self.totals['refunded'])} HWC refunded to the poster."
                )
                return
            self.say("Running. Press Ctrl-C to stop.")
            while True:
                supervisor.check()
                time.sleep(1)
        except (KeyboardInterrupt, _Stop):
            self.say("\nStopping…")
        except ChildDied as exc:
            raise CommandError(str(exc)) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            for name, code in supervisor.stop_all():
                self.say(f"  stopped {name} (exit code {code})")
            if self.devchain is not None:
                self.devchain.stop()
                self.say("  stopped Anvil (its state is kept in var/chain/)")
            if started_redis and embedded_redis.stop(var_dir):
                self.say("  stopped the embedded Redis")

    def _redis(self, var_dir: Path) -> tuple[str, bool]:
        if not settings.REDIS_IS_EMBEDDED:
            self.say(f"Redis: {settings.REDIS_URL.split('@')[-1]} (REDIS_URL)")
            use_broker(settings.REDIS_URL)
            return settings.REDIS_URL, False
        try:
            server, started = embedded_redis.start(var_dir)
        except embedded_redis.EmbeddedRedisError as exc:
            raise CommandError(str(exc)) from None
        how = "started" if started else "reusing the one already running,"
        self.say(f"Redis: embedded Valkey {how} on 127.0.0.1:{server.port} (data in {server.directory})")
        # This process talks to Redis too (the broker, ACL users of replaced demo nodes): point it there.
        settings.REDIS_URL = server.url
        use_broker(server.url)
        return server.url, started

    def _chain(self, var_dir: Path) -> None:
        """Use ETH_RPC_URL's chain, or start the project's Anvil; deploy the contracts there unless they are."""
        url = settings.ETH_RPC_URL
        if not url:
            state = settings.CHAIN_DIR / "anvil-state.json"
            try:
                self.devchain = devchain.start(state_file=state, log_file=var_dir / "logs" / "anvil.log")
            except devchain.DevChainError as exc:
                raise CommandError(str(exc)) from None
            url = self.devchain.url
            settings.ETH_RPC_URL = url
        w3 = connect(url)
        try:
            dep = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
            deployed = bool(w3.eth.get_code(dep.escrow))
        except ChainError:
            deployed = False
        if not deployed:
            if w3.eth.chain_id not in devchain.LOCAL_CHAIN_IDS:
                raise CommandError("No Hashwork contracts on the ETH_RPC_URL chain: run `manage.py chain deploy`.")
            keys = devchain.dev_keys()
            treasury = Sender(w3, keys[-1]).address
            dep = deploy(w3, Sender(w3, keys[0]), treasury, 250, deployments_file=settings.CHAIN_DEPLOYMENTS_FILE)
        self.say(f"Chain: {'Anvil' if self.devchain else url} (chain {dep.chain_id}), escrow {dep.escrow}")

    def _dataset(self, base_url: str, token: str, job_id: UUID, supervisor: Supervisor, timeout: float) -> None:
        """Download the merged dataset through the API, as the poster would, and draw one labeled preview."""
        _wait(
            supervisor,
            JobOutput.objects.filter(job_id=job_id).exists,
            timeout=timeout,
            failure=f"The dataset was not merged within {timeout:.0f}s; see var/logs/worker.log.",
        )
        request = urllib.request.Request(  # noqa: S310 - our own local server
            f"{base_url}/api/jobs/{job_id}/output/", headers={"Authorization": f"Token {token}"}
        )
        target = settings.VAR_DIR / "demo-dataset.zip"
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            target.write_bytes(response.read())
        summary = JobOutput.objects.get(job_id=job_id).summary
        preview = settings.VAR_DIR / "demo-preview.png"
        shown = subprocess.run(
            [sys.executable, "-m", "synthetic", "show", str(target), "--image", "0", "--out", str(preview)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        self.say(
            f"Dataset: {summary.get('images')} images, {summary.get('annotations')} labeled objects (COCO) in {target}"
            + (f"; a labeled preview is in {preview}" if shown.returncode == 0 else "")
        )

    def _post_train_job(self, base_url: str, token: str, render_id: UUID) -> UUID:
        body = {
            "kind": "train",
            "spec": {**TRAIN_SPEC, "dataset": {"job": str(render_id)}},
            "price_per_replica": str(10**17),
            "replication": 1,
        }
        status, reply = _request(f"{base_url}/api/jobs/", token=token, body=body)
        if status != 201:
            raise CommandError(f"Posting the train job failed with HTTP {status}: {reply}")
        spec = reply["spec"]
        self.say(
            f"Posted a train job on that dataset: {spec['model']} on {spec['image_size']}² product crops, up to "
            f"{spec['rounds']} rounds × {spec['participants']} nodes, {spec['compression']['name']} updates, "
            f"quote {_tokens(int(reply['quote']))} HWC."
        )
        return UUID(reply["id"])

    def _follow_train(self, job_id: UUID, supervisor: Supervisor, timeout: float) -> float:
        """Print each round as it closes; return the final held-out accuracy."""
        from marketplace.federated.models import RoundState, TrainData, TrainRound

        shown = -1
        last_change = time.monotonic()
        bar = self._bar(int(TRAIN_SPEC["rounds"]), "rounds trained", "round")
        while True:
            supervisor.check()
            data = TrainData.objects.filter(job_id=job_id).first()
            if shown == -1 and data is not None:
                self.say(
                    f"  {len(data.classes)} classes, {data.train_samples} training crops in {len(data.shards)} shards, "
                    f"{data.val_samples} held out; untrained accuracy {data.baseline['accuracy']:.1%}"
                )
                shown = 0
            for rnd in TrainRound.objects.filter(job_id=job_id, state=RoundState.CLOSED, index__gte=max(shown, 0)):
                m = rnd.metrics
                up = sum(m.get("bytes_up", {}).values())
                line = (
                    f"  round {rnd.index + 1}: {m['accepted']} updates accepted, held-out accuracy {m['accuracy']:.1%} "
                    f"(loss {m['loss']:.3f}), {up / 1024:.0f} KiB uploaded, {m['wall_seconds']:.0f}s"
                )
                if bar is None:
                    self.say(line)
                else:
                    bar.write(line)
                    bar.update(1)
                shown, last_change = rnd.index + 1, time.monotonic()
            job = Job.objects.get(id=job_id)
            if job.state == JobState.COMPLETED:
                if bar is not None:
                    bar.close()
                break
            if job.state in JOB_TERMINAL:
                raise CommandError(f"The train job ended {job.state}: {job.state_reason}")
            if time.monotonic() - last_change > max(timeout, TRAIN_SPEC["round_deadline_seconds"] * 2):
                raise CommandError(f"The train job made no progress for {timeout:.0f}s; see {supervisor.log_dir}.")
            time.sleep(0.5)
        accuracy = float(TrainRound.objects.filter(job_id=job_id).order_by("-index").first().metrics["accuracy"])  # type: ignore[union-attr]
        self.say(f"The train job is completed ({job.state_reason}).")
        return accuracy

    def _model(self, base_url: str, token: str, job_id: UUID) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own local server
            f"{base_url}/api/jobs/{job_id}/output/", headers={"Authorization": f"Token {token}"}
        )
        target = settings.VAR_DIR / "demo-model.zip"
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            target.write_bytes(response.read())
        self.say(f"Model: {target} (model.safetensors + model_card.json); try `python -m training predict`.")

    def _settle_and_refund(self, job_id: UUID, supervisor: Supervisor, timeout: float) -> None:
        """Wait until the settlement worker has paid every accepted replica and closed the job, then refund the
        poster's rest and show where every token went."""
        w3 = connect(settings.ETH_RPC_URL)
        dep = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
        escrow = dep.escrow_contract(w3)
        _wait(
            supervisor,
            lambda: (
                Payout.objects.filter(job_id=job_id).exists()
                and not Payout.objects.filter(job_id=job_id).exclude(state=PayoutState.SETTLED).exists()
                and escrow.job_of(job_id).closed
            ),
            timeout=timeout,
            failure=f"Settlement did not finish within {timeout:.0f}s; see var/logs/settlement.log.",
        )
        payouts = Payout.objects.filter(job_id=job_id)
        txs = sorted({p.tx_hash for p in payouts})
        self.say(f"Paid {payouts.count()} replicas on chain in {len(txs)} release transaction(s): {', '.join(txs)}")
        poster = Sender(w3, devchain.dev_keys(2)[1])
        before = dep.token_contract(w3).balance_of(poster.address)
        remaining = escrow.job_of(job_id).remaining
        if remaining:
            dep.escrow_contract(w3, poster).refund(job_id)
        refunded = dep.token_contract(w3).balance_of(poster.address) - before
        self.say(f"  poster {poster.address}: refunded {_tokens(refunded)} HWC")
        self.totals["paid"] += sum(int(p.amount) for p in payouts)
        self.totals["refunded"] += refunded
        for node in Node.objects.filter(payouts__job_id=job_id).distinct():
            wallet = w3.to_checksum_address(node.wallet_address)
            self.say(f"  node {node.name} {wallet}: credited {_tokens(escrow.credit_of(wallet))} HWC")
        self.say(f"  treasury {dep.treasury}: {_tokens(escrow.credit_of(dep.treasury))} HWC in fees")
        # The chain reader (beat, every 2 s) records the refund in the ledger; reconcile once it has.
        _wait(
            supervisor,
            lambda: not remaining or LedgerEntry.objects.filter(job_id=job_id, kind=EntryKind.REFUND).exists(),
            timeout=timeout,
            failure="The refund never reached the ledger; see var/logs/worker.log.",
        )
        mismatches = reconcile(w3=w3, escrow=escrow, from_block=dep.block_number)
        for mismatch in mismatches:
            self.say(f"  MISMATCH {mismatch}", self.style.ERROR)
        if mismatches:
            raise CommandError("The ledger does not match the chain (see above).")
        self.say("The ledger matches the chain (payments reconcile).")

    def _start_processes(self, supervisor: Supervisor, *, redis_url: str, port: int, timeout: float) -> str:
        if not _port_free(port):
            new_port = _free_port()
            self.say(f"Port {port} is taken; using {new_port} instead (choose one with --port).")
            port = new_port
        db = settings.DATABASES["default"]
        self.say(f"Database: {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}")
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "ETH_RPC_URL": settings.ETH_RPC_URL,
            "HASHWORK_VAR_DIR": str(settings.VAR_DIR),
            "DJANGO_SETTINGS_MODULE": "marketplace.settings",
            "PYTHONUNBUFFERED": "1",
        }
        python = sys.executable
        supervisor.start(
            "web",
            [python, "-m", "gunicorn", "marketplace.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--access-logfile", "-", "--graceful-timeout", "10"],
            env,
        )  # fmt: skip
        supervisor.start(
            "worker",
            [python, "-m", "celery", "-A", "marketplace", "worker", "--queues", ",".join(MARKETPLACE_QUEUES),
             "--concurrency", "2", "--loglevel", "INFO", "--hostname", f"marketplace-{os.getpid()}@%h"],
            env,
        )  # fmt: skip
        # The settlement worker alone owns the operator key's nonce: its own queue, one process.
        supervisor.start(
            "settlement",
            [python, "-m", "celery", "-A", "marketplace", "worker", "--queues", Queue.SETTLEMENT.value,
             "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"settlement-{os.getpid()}@%h"],
            env,
        )  # fmt: skip
        supervisor.start("beat", [python, "-m", "celery", "-A", "marketplace", "beat", "--loglevel", "INFO"], env)
        self.env = env
        base_url = f"http://127.0.0.1:{port}"
        self.say(f"Starting the web server on {base_url}, the marketplace and settlement workers and beat…")

        def answers() -> bool:
            try:
                return _request(f"{base_url}/healthz/")[0] == 200
            except (OSError, ValueError):
                return False

        _wait(
            supervisor,
            answers,
            timeout=timeout,
            failure=f"The web server did not answer on {base_url} within {timeout:.0f}s; see var/logs/web.log.",
        )
        return base_url

    def _demo_user(self, username: str) -> str:
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"email": f"{username}@demo.hashwork.local"}
        )
        if created or not user.check_password(DEMO_PASSWORD):
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        token, _ = Token.objects.get_or_create(user=user)
        return str(token.key)

    def _post_sample_job(self, base_url: str, token: str) -> UUID:
        status, body = _request(f"{base_url}/api/jobs/", token=token, body=SAMPLE_JOB)
        if status != 201:
            raise CommandError(f"Posting the sample job failed with HTTP {status}: {body}")
        self.say(
            f"Posted a render job through the API: {body['spec']['images']} images in {body['task_count']} chunks × "
            f"{body['replication']} replicas, "
            f"quote {_tokens(int(body['quote']))} HWC ({body['quote']} base units) plus fees, state {body['state']}."
        )
        return UUID(body["id"])

    def _start_agents(self, supervisor: Supervisor, *, base_url: str, timeout: float) -> None:
        """Enrol fresh local nodes through the real `nodeagent enroll` and run them (`nodeagent run`)."""
        token = self._demo_user(DEMO_OPERATOR)
        operator = get_user_model().objects.get(username=DEMO_OPERATOR)
        for old in Node.objects.filter(operator=operator, is_active=True):
            node_deactivate(node_id=old.id, reason="replaced by a new demo run")
        agents_dir = settings.VAR_DIR / "agents"
        run_tag = uuid.uuid4().hex[:6]
        for n in range(1, DEMO_AGENTS + 1):
            config = agents_dir / f"agent-{n}.json"
            enroll = subprocess.run(
                [sys.executable, "-m", "nodeagent", "--config", str(config), "enroll", "--marketplace", base_url,
                 "--token", token, "--name", f"demo-{n}-{run_tag}", "--force"],
                env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            if enroll.returncode != 0:
                raise CommandError(f"Enrolling demo node {n} failed:\n{enroll.stdout}{enroll.stderr}")
            supervisor.start(
                f"agent-{n}",
                [sys.executable, "-m", "nodeagent", "--config", str(config), "run", "--heartbeat-seconds", "2"],
                self.env,
            )
        self.say(f"Enrolled and started {DEMO_AGENTS} local nodes (nodeagent enroll + nodeagent run).")

    def _follow(self, job_id: UUID, supervisor: Supervisor, timeout: float) -> None:
        """Show progress until the job is done; fail if it ends otherwise or stalls past `timeout`."""
        last_line = ""
        last_change = time.monotonic()
        bar = self._bar(Job.objects.get(id=job_id).task_count, "chunks verified", "chunk")
        while True:
            supervisor.check()
            job = Job.objects.get(id=job_id)
            counts = {state: 0 for state in ("pending", "running", "completed", "failed", "cancelled")}
            for state in job.tasks.values_list("state", flat=True):
                counts[state] += 1
            line = (
                f"  {counts['completed']}/{job.task_count} chunks verified, {counts['running']} running, "
                f"{Assignment.objects.filter(task__job=job, state=AssignmentState.ACCEPTED).count()} replicas accepted"
            )
            if line != last_line:
                if bar is None:
                    self.say(line)
                else:
                    bar.update(counts["completed"] - bar.n)
                    bar.set_postfix_str(f"{counts['running']} running")
                last_line, last_change = line, time.monotonic()
            if job.state == JobState.COMPLETED:
                if bar is not None:
                    bar.close()
                break
            if job.state in JOB_TERMINAL:
                raise CommandError(f"The sample job ended {job.state}: {job.state_reason}")
            if time.monotonic() - last_change > timeout:
                raise CommandError(f"The sample job made no progress for {timeout:.0f}s; see {supervisor.log_dir}.")
            time.sleep(0.5)
        per_node: dict[str, int] = {}
        for name in Assignment.objects.filter(task__job=job, state=AssignmentState.ACCEPTED).values_list(
            "node__name", flat=True
        ):
            per_node[name] = per_node.get(name, 0) + 1
        spread = ", ".join(f"{name}: {n}" for name, n in sorted(per_node.items()))
        self.say(f"The job is completed: every chunk's replicas agreed ({spread}).")

    def _bar(self, total: int, desc: str, unit: str) -> Any:
        """A progress bar on a terminal; None when stdout is not one (logs, tests), which get a line per change."""
        if not self.stdout.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"  {desc}", unit=unit, file=sys.stdout, leave=True)

    def _fund_and_wait(self, job_id: UUID, supervisor: Supervisor, timeout: float) -> None:
        out = io.StringIO()
        call_command("chain", "fund-dev", str(job_id), "--extra", "2", stdout=out)
        self.say(out.getvalue().strip())
        self.say("Waiting for the marketplace to see the deposit and split the job into tasks…")
        _wait(
            supervisor,
            lambda: Job.objects.get(id=job_id).state not in (JobState.DRAFT, JobState.FUNDED),
            timeout=timeout,
            failure=f"The worker did not split the job within {timeout:.0f}s; see var/logs/worker.log.",
        )
        job = Job.objects.get(id=job_id)
        self.say(f"The worker split the job into {job.tasks.count()} tasks; it is now {job.state}.")
