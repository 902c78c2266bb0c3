"""`python manage.py demo`: run the marketplace locally on embedded defaults and post a sample job."""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import asdict
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from contracts.units import tokens_format
from marketplace.core.dockerstack import DockerStackError
from marketplace.core.localstack import LocalStack, LocalStackError, PosterClient
from marketplace.core.management import demo_docker
from marketplace.core.management import demo_steps as steps
from marketplace.core.management.demo_steps import DEMO_OPERATORS, DEMO_PASSWORD, DEMO_POSTER
from marketplace.core.pidlock import LockHeld, PidLock, pid_lock
from marketplace.core.processes import ChildDied
from marketplace.core.samples import SAMPLE_RENDER_JOB, SAMPLE_TRAIN_SPEC, sample_train_job


class _Stop(Exception):
    """SIGTERM asks the demo to stop, like Ctrl-C."""


class Command(BaseCommand):
    help = (
        "Run Hashwork locally on embedded defaults (Redis, Anvil, web server, workers, beat, two node agents); as a "
        "demo poster, post a render job and then a train job on its dataset, fund them in the escrow, follow them "
        "until verified and paid, refund and reconcile; print the URL, logins and job ids and write the figures to "
        "var/demo-summary.json. Runs until Ctrl-C (--headless: exits 0 once done), then stops all it started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--headless", action="store_true", help="Exit 0 once the sample jobs have completed.")
        parser.add_argument(
            "--no-train", action="store_true", help="Stop after the render job (skip the train job on its dataset)."
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="Web server port (default 8000; a free one if it is taken)."
        )
        parser.add_argument(
            "--timeout", type=float, default=120.0, help="Seconds to wait for each step before giving up."
        )
        parser.add_argument(
            "--stack",
            choices=("local", "docker"),
            default="local",
            help="local (default): start every service here as a process. docker: the services already run as "
            "the containers of docker/stack.py (`make docker-demo` runs this), whose state HASHWORK_VAR_DIR holds; "
            "the node agents are started as containers of that stack.",
        )
        parser.add_argument(
            "--images",
            type=int,
            default=SAMPLE_RENDER_JOB["spec"]["images"],
            help=f"Images the render job renders (default {SAMPLE_RENDER_JOB['spec']['images']}), in chunks of up to "
            f"{SAMPLE_RENDER_JOB['spec']['chunk_size']} and at least two chunks; `make docker-demo` renders fewer.",
        )
        parser.add_argument(
            "--setup-only",
            action="store_true",
            help="With --stack docker: make the demo users and start the node agents, print the logins and exit "
            "with the stack running (`make docker-up`).",
        )

    def say(self, message: str, style: Any = None) -> None:
        self.stdout.write(style(message) if style else message)
        self.stdout.flush()

    def handle(
        self, *args: Any, headless: bool, no_train: bool, port: int, timeout: float, stack: str, setup_only: bool,
        images: int, **options: Any,
    ) -> None:  # fmt: skip
        if not 1 <= port <= 65535:
            raise CommandError(f"--port {port} is not a TCP port (1-65535).")
        if timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds.")
        if not 2 <= images <= 1000:
            raise CommandError(f"--images {images}: render from 2 to 1000 images (two chunks at least).")
        spec = SAMPLE_RENDER_JOB["spec"]
        chunk_size = min(spec["chunk_size"], images // 2)
        self.render_job = {**SAMPLE_RENDER_JOB, "spec": {**spec, "images": images, "chunk_size": chunk_size}}
        if setup_only and stack != "docker":
            raise CommandError("--setup-only needs --stack docker (a local demo stops its processes when it exits).")
        self.docker, self.setup_only = stack == "docker", setup_only
        lock = self._lock()
        try:
            self._run(headless=headless, no_train=no_train, port=port, timeout=timeout)
        finally:
            lock.release()

    def _lock(self) -> PidLock:
        """The var/ directory's demo lock, held until the demo ends; a second demo there refuses to start."""
        path = settings.VAR_DIR / "demo.lock"
        try:
            return pid_lock(path)
        except LockHeld as held:
            pid = held.pid if held.pid is not None else "(starting)"
            raise CommandError(
                f"Another demo (pid {pid}) is running in {settings.VAR_DIR}: a second one would share its database, "
                f"chain state and Redis and break both. Stop it first (Ctrl-C in its terminal, or kill {pid}), or "
                "run this one from another checkout or with HASHWORK_VAR_DIR set to another directory."
            ) from None

    def _run(self, *, headless: bool, no_train: bool, port: int, timeout: float) -> None:
        self.stack = LocalStack(settings.VAR_DIR, {"DJANGO_SETTINGS_MODULE": "marketplace.settings"})
        self.timeout = timeout
        self.summary: dict[str, Any] = {"completed": False}

        def on_sigterm(signum: int, frame: Any) -> None:
            raise _Stop

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        # The demo speaks for itself on stdout; the services' own logs go to var/logs/.
        logging.getLogger("marketplace").setLevel(logging.WARNING)
        try:
            if self.docker:
                demo_docker.container_supervisor(self.stack)
                base_url, token, started = demo_docker.demo_start_docker(self.stack, timeout=timeout, say=self.say)
            else:
                base_url, token, started = steps.demo_start(self.stack, port=port, timeout=self.timeout, say=self.say)
            self.summary.update(started)
            if self.setup_only:
                self._logins(base_url, token)
                return
            poster = PosterClient(base_url, token)
            render = self._render(poster)
            train = None if no_train else self._train(poster, render)
            self.say("")
            self._logins(base_url, token)
            for line in (
                f"  Render job   {base_url}/jobs/{render}/",
                *([f"  Train job    {base_url}/jobs/{train}/"] if train else []),
            ):
                self.say(line, self.style.SUCCESS)
            self.say(f"  Try:  curl -H 'Authorization: Token {token}' {base_url}/api/jobs/{render}/")
            self.say(f"  Logs: {self.stack.supervisor.log_dir}")
            paid = [self.summary[job]["settlement"] for job in ("render", "train") if job in self.summary]
            accuracy = self.summary["train"]["final_accuracy"] if train else None
            totals = {
                "images_rendered": self.render_job["spec"]["images"],
                "final_accuracy": accuracy,
                "paid": sum(s["paid"] for s in paid),
                "refunded": sum(s["refunded"] for s in paid),
            }
            self.summary.update(completed=True, dashboard_url=f"{base_url}/", totals=totals)
            self._write_summary()
            if headless:
                trained = f" and a model trained (held-out accuracy {accuracy:.1%})" if accuracy is not None else ""
                self.say(f"Headless demo finished: a dataset rendered{trained} on two local nodes, verified and paid.")
                self.say(
                    f"Summary: {totals['images_rendered']} images rendered"
                    + (f", held-out accuracy {accuracy:.1%}" if accuracy is not None else "")
                    + f", {tokens_format(totals['paid'])} HWC paid to the nodes, "
                    f"{tokens_format(totals['refunded'])} HWC refunded to the poster."
                )
                return
            self.say("Running. Press Ctrl-C to stop.")
            while True:
                self.stack.supervisor.check()
                time.sleep(1)
        except (KeyboardInterrupt, _Stop):
            self.say("\nStopping…")
        except (ChildDied, LocalStackError, DockerStackError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            stopped = self.stack.stop()
            for name, code in stopped.processes:
                self.say(f"  stopped {name} (exit code {code})")
            if stopped.chain:
                self.say("  stopped Anvil (its state is kept in var/chain/)")
            if stopped.redis:
                self.say("  stopped the embedded Redis")
            self.summary.update(
                stopped=dict(stopped.processes), chain_stopped=stopped.chain, redis_stopped=stopped.redis
            )
            self._write_summary()

    def _logins(self, base_url: str, token: str) -> None:
        for line in (
            f"  Dashboard    {base_url}/  (API docs: {base_url}/api/docs/)",
            f"  Log in as    {DEMO_POSTER} / {DEMO_PASSWORD} (jobs) or {' or '.join(DEMO_OPERATORS)} / "
            f"{DEMO_PASSWORD} (a node each)",
            f"  API token    {token}   (user {DEMO_POSTER})",
        ):
            self.say(line, self.style.SUCCESS)

    def _render(self, poster: PosterClient) -> UUID:
        """The render job: posted, funded, followed until verified, paid and refunded; its dataset downloaded."""
        job = poster.job_create(self.render_job)
        self.say(
            f"Posted a render job through the API: {job['spec']['images']} images in {job['task_count']} chunks × "
            f"{job['replication']} replicas, quote {tokens_format(int(job['quote']))} HWC ({job['quote']} base units) "
            f"plus fees, state {job['state']}."
        )
        job_id = UUID(job["id"])
        record = self._fund(job, images=job["spec"]["images"], tasks=job["task_count"], replication=job["replication"])
        chunks = steps.render_follow(job_id, self.stack.supervisor, self.timeout, self.say, tty=self.stdout.isatty())
        record.update(progress=asdict(chunks), replicas_per_node=steps.replicas_per_node(job_id))
        spread = ", ".join(f"{name}: {n}" for name, n in record["replicas_per_node"].items())
        self.say(f"The job is completed: every chunk's replicas agreed ({spread}).")
        self._settle(job_id, record)
        dataset = steps.dataset_wait(job_id, self.stack.supervisor, self.timeout)
        path = poster.output_download(str(job_id), settings.VAR_DIR / "demo-dataset.zip")
        preview = settings.VAR_DIR / "demo-preview.png"
        drawn = steps.preview_draw(path, preview)
        self.say(
            f"Dataset: {dataset.get('images')} images, {dataset.get('annotations')} labeled objects (COCO) in {path}"
            + (f"; a labeled preview is in {preview}" if drawn else "")
        )
        record["dataset"] = {**dataset, "path": str(path), "preview": str(preview) if drawn else None}
        record["state"] = poster.job(str(job_id))["state"]
        return job_id

    def _train(self, poster: PosterClient, render_id: UUID) -> UUID:
        """The train job on the render job's dataset, the same way, round by round; its model downloaded."""
        job = poster.job_create(sample_train_job(str(render_id)))
        spec = job["spec"]
        self.say(
            f"Posted a train job on that dataset: {spec['model']} on {spec['image_size']}² product crops, up to "
            f"{spec['rounds']} rounds × {spec['participants']} nodes, {spec['compression']['name']} updates, "
            f"quote {tokens_format(int(job['quote']))} HWC."
        )
        job_id = UUID(job["id"])
        record = self._fund(job, model=spec["model"], rounds=spec["rounds"], participants=spec["participants"])
        data, rounds = steps.train_follow(
            job_id, self.stack.supervisor, self.timeout, self.say, tty=self.stdout.isatty(),
            rounds=SAMPLE_TRAIN_SPEC["rounds"], round_deadline=SAMPLE_TRAIN_SPEC["round_deadline_seconds"],
        )  # fmt: skip
        record.update(data=asdict(data) if data else None, rounds_closed=[asdict(r) for r in rounds])
        record["final_accuracy"], record["state_reason"] = steps.train_outcome(job_id)
        self.say(f"The train job is completed ({record['state_reason']}).")
        self._settle(job_id, record)
        model = poster.output_download(str(job_id), settings.VAR_DIR / "demo-model.zip")
        record.update(state=poster.job(str(job_id))["state"], model_path=str(model))
        self.say(f"Model: {model} (model.safetensors + model_card.json); try `python -m training predict`.")
        return job_id

    def _fund(self, job: dict[str, Any], **figures: Any) -> dict[str, Any]:
        """Fund the posted job in the escrow and wait until it is split; returns its record in the summary."""
        funding = steps.job_fund(UUID(job["id"]), self.stack.supervisor, self.timeout, self.say)
        record = {"job_id": job["id"], **figures, "quote": int(job["quote"]), "state_posted": job["state"], **funding}
        self.summary[job["kind"]] = record
        return record

    def _settle(self, job_id: UUID, record: dict[str, Any]) -> None:
        settled = steps.job_settle(job_id, self.stack.supervisor, self.timeout, self.say)
        for mismatch in settled.mismatches:
            self.say(f"  MISMATCH {mismatch}", self.style.ERROR)
        record["settlement"] = {**asdict(settled), "reconciled": not settled.mismatches}
        if settled.mismatches:
            raise CommandError(
                "The ledger does not match the chain (see above). If var/ was kept from an earlier chain, run "
                "`make clean` and start again."
            )
        self.say("The ledger matches the chain (payments reconcile).")

    def _write_summary(self) -> None:
        """The story's figures, for scripts and tests (the printed story is for people)."""
        (settings.VAR_DIR / "demo-summary.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
