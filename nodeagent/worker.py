"""The agent's Celery worker: consumes only this node's queue, inside its own key prefix, and runs each
assignment in a sandbox container (nodeagent.sandbox) or, without Docker, a forked child. Started by `nodeagent run`
as `python -m nodeagent.worker CONFIG [SLOTS [SANDBOX [IMAGE]]]`. Its broker connection (reconnecting, probing,
reporting to the agent) is nodeagent.broker's."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from kombu import Queue

from nodeagent import broker, child, inputs, probe, sandbox
from nodeagent import config as agent_config
from nodeagent.client import ApiError, Conflict, MarketplaceClient
from nodeagent.retry import TransientError
from nodeagent.signer import Wallet
from protocol import AssignmentMessage, ProtocolError

logger = logging.getLogger("nodeagent.worker")
TASK_NAME = "nodeagent.run_assignment"
MAX_TASKS_PER_CHILD = 50

_config: agent_config.AgentConfig | None = None
# What assignments run in; main() decides (a test may set it).
_sandbox = sandbox.Sandbox("none", reason="the worker was started without a sandbox choice")


def paused(cfg: agent_config.AgentConfig) -> bool:
    return (cfg.state / "paused").exists()


def running_dir(cfg: agent_config.AgentConfig) -> Path:
    return cfg.state / "running"


def make_app(cfg: agent_config.AgentConfig) -> Celery:
    import nodeagent.runners  # noqa: F401  (imported once here, so forked children start warm)

    app = Celery("nodeagent", broker=cfg.broker_url, set_as_current=True)
    app.conf.update(
        broker_transport_options={"global_keyprefix": cfg.broker_prefix, "visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(cfg.queue, routing_key=cfg.queue)],
        task_default_queue=cfg.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        accept_content=["json"],
        task_serializer="json",
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=MAX_TASKS_PER_CHILD,
        # Remote control and events need channels shared by every node: this node's ACL forbids them.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_consumer=broker.NodeConsumer,
        # Never give up: the agent reports the outage, and the marketplace leases nothing meanwhile.
        broker_connection_max_retries=None,
        # A running assignment needs no broker (the lease, kept by heartbeats, decides): it goes on.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.steps["consumer"].add(broker.BrokerConsuming)
    app.task(name=TASK_NAME, acks_late=True)(run_assignment)
    return app


def run_assignment(message: Any) -> str:
    """Start, run in a child process, sign and upload one assignment. Always acknowledges: the lease, not
    the broker, decides what is retried, so a crashing runner is reported failed, never run again here."""
    assert _config is not None, "the worker was started without a config"
    cfg = _config
    client = MarketplaceClient(cfg.marketplace_url, token=cfg.token)
    try:
        assignment = AssignmentMessage.from_json(message)
    except ProtocolError as exc:
        return _refuse(client, message, exc)
    assignment_id = assignment.assignment_id
    try:
        if paused(cfg):
            client.release(assignment_id)
            logger.info("assignment %s handed back: the node is paused", assignment_id)
            return "released"
        begun = time.monotonic()
        client.start(assignment_id)
    except Conflict as exc:
        logger.info("assignment %s not started: %s", assignment_id, exc.message)
        return "skipped"
    except (ApiError, TransientError) as exc:
        logger.warning("assignment %s: could not start (%s); its lease will expire", assignment_id, exc)
        return "unreachable"
    marker = running_dir(cfg) / assignment_id
    workdir = Path(tempfile.mkdtemp(prefix=f"{assignment_id}-", dir=cfg.state / "work"))
    # Seconds per phase, in the log line of each assignment: where a chunk's fixed cost goes (bench/render.py).
    phases = {"start": time.monotonic() - begun}
    try:
        outcome = _timed(
            phases, "inputs", lambda: inputs.fetch(client, assignment, workdir, inputs.cache_dir(cfg.state))
        ) or _timed(phases, "run", lambda: _run_child(cfg, assignment, workdir, marker))
        if outcome is not None:
            with contextlib.suppress(Conflict):
                client.fail(assignment_id, outcome)
            logger.warning("assignment %s failed: %s", assignment_id, outcome.splitlines()[-1] if outcome else "")
            return "failed"
        artifact = workdir / "artifact"
        sha256 = _timed(phases, "hash", lambda: inputs.file_sha256(artifact))
        signature = Wallet(cfg.wallet_key).sign_result(assignment_id, sha256)
        metrics = (workdir / "metrics.json").read_text()
        _timed(
            phases,
            "upload",
            lambda: client.submit(
                assignment_id, artifact=artifact, sha256=sha256, signature=signature, metrics=metrics
            ),
        )
        logger.info("assignment %s submitted (sha256 %s; %s)", assignment_id, sha256[:12], _phases_text(phases))
        return "submitted"
    except Conflict as exc:
        logger.info("assignment %s: result not taken: %s", assignment_id, exc.message)
        return "refused"
    except (ApiError, TransientError) as exc:
        logger.warning("assignment %s: upload failed (%s); its lease will expire", assignment_id, exc)
        return "upload-failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        marker.unlink(missing_ok=True)


T = TypeVar("T")


def _timed(phases: dict[str, float], name: str, step: Callable[[], T]) -> T:
    began = time.monotonic()
    try:
        return step()
    finally:
        phases[name] = time.monotonic() - began


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.3f}s" for name, seconds in phases.items())


def _refuse(client: MarketplaceClient, raw: Any, error: ProtocolError) -> str:
    """A message this agent cannot read: report the assignment failed with the reason (often: upgrade the agent),
    so that it is re-leased to a node that can read it at once rather than when its lease expires."""
    assignment_id = raw.get("assignment_id") if isinstance(raw, dict) else None
    if not isinstance(assignment_id, str) or not assignment_id:
        logger.error("an assignment message without an assignment id was dropped: %s", error)
        return "incompatible"
    logger.error("assignment %s refused: %s", assignment_id, error)
    try:
        client.fail(assignment_id, str(error))
    except Conflict:
        logger.info("assignment %s had ended already (cancelled or expired)", assignment_id)
    except (ApiError, TransientError) as exc:
        logger.warning("assignment %s: could not report it failed (%s); its lease will expire", assignment_id, exc)
    return "incompatible"


def _run_child(cfg: agent_config.AgentConfig, message: AssignmentMessage, workdir: Path, marker: Path) -> str | None:
    """Run the runner (in the sandbox container, else a forked child) until it ends; None on success, else why it
    failed. Heartbeats keep a running lease alive; when the marketplace revokes it (cancelled, expired), the heartbeat
    loop kills the runner (the marker names its pid or container)."""
    payload_file = workdir / "payload.json"
    payload_file.write_text(json.dumps(message.payload))
    if _sandbox.mode == "docker":
        return _run_container(cfg, message, workdir, marker)
    log_path = workdir / "runner.log"
    started = time.monotonic()
    pid = child.fork(message.kind, payload_file, workdir, log_path)
    # The agent's heartbeat reads the marker: the runner's pid (to stop it) and its workdir (for progress).
    marker.write_text(json.dumps({"pid": pid, "workdir": str(workdir)}))
    limit = float(message.time_limit_seconds)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    watchdog = threading.Timer(limit, kill)
    watchdog.start()
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        watchdog.cancel()
    code = os.waitstatus_to_exitcode(status)
    if code == 0 and not timed_out.is_set():
        return None
    if timed_out.is_set():
        how = f"ran past the {message.kind} time limit of {limit:.0f}s and was killed"
    elif code < 0:
        how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return _failure(message.kind, how, time.monotonic() - started, log_path)


def _run_container(
    cfg: agent_config.AgentConfig, message: AssignmentMessage, workdir: Path, marker: Path
) -> str | None:
    """The runner in a fresh sandbox container; its output becomes WORKDIR/runner.log, as the forked child's."""
    assert _sandbox.image is not None
    limits = sandbox.limits_for(slots=cfg.slots, cpu_cores=os.cpu_count() or 1, ram_mb=probe.ram_mb())
    inside = sandbox.workdir_in_container(workdir)
    # The train runner keeps its residual per job in STATE/train/<job>: only that job's folder is mounted.
    train_dir = (cfg.state / "train" / message.job_id, message.job_id) if message.kind == "train" else None
    log_path = workdir / "runner.log"

    def started(name: str) -> None:
        marker.write_text(json.dumps({"pid": None, "container": name, "workdir": str(workdir)}))

    limit = float(message.time_limit_seconds)
    begun = time.monotonic()
    try:
        outcome = sandbox.run(
            image=_sandbox.image,
            # The workdir's random suffix: a redelivered message never meets a container left by its first delivery.
            name=f"hashwork-task-{workdir.name}",
            workdir=workdir,
            command=sandbox.child_command(message.kind, inside),
            limits=limits,
            time_limit=limit,
            node_id=cfg.node_id,
            train_dir=train_dir,
            # Exactly the GPUs the task asks for; none (a CPU-only container) when it asks for none.
            gpus=message.gpus,
            on_start=started,
        )
    except sandbox.SandboxError as exc:
        return (
            f"the {message.kind} runner could not start in its sandbox container after "
            f"{time.monotonic() - begun:.1f}s: {exc}"
        )
    # The agent writes the log after the container ends, over anything the task wrote under that name.
    log_path.write_bytes(outcome.log)
    how = sandbox.describe_failure(outcome, kind=message.kind, limit=limit, limits=limits)
    return None if how is None else _failure(message.kind, how, outcome.seconds, log_path)


def _failure(kind: str, how: str, seconds: float, log_path: Path) -> str:
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    return f"the {kind} runner {how} after {seconds:.1f}s:\n{tail}"


def main(argv: list[str]) -> None:
    global _config, _sandbox
    path = Path(argv[0])
    slots = int(argv[1]) if len(argv) > 1 else None
    _config = agent_config.load(path).with_limits(slots=slots)
    # As `nodeagent run` chooses: its argument, else NODEAGENT_SANDBOX, else the config's.
    requested = argv[2] if len(argv) > 2 else os.environ.get("NODEAGENT_SANDBOX") or _config.sandbox
    image = argv[3] if len(argv) > 3 else _config.sandbox_image
    try:
        _sandbox = sandbox.choose(requested, image)
    except sandbox.SandboxError as exc:
        sys.exit(f"nodeagent worker: {exc}")
    broker.configure(_config)
    (_config.state / "work").mkdir(parents=True, exist_ok=True)
    running_dir(_config).mkdir(parents=True, exist_ok=True)
    sandbox.state_write(_config.state, _sandbox)
    logger.info("assignments run in: %s", _sandbox.describe())
    app = make_app(_config)
    # Runner children are forked from the pool processes: import the heavy libraries once, here, so a train
    # assignment does not pay torch's import (~1-2 s) every time. Importing starts no threads, so forking stays safe.
    with contextlib.suppress(ImportError):
        import training.local  # noqa: F401
    # --quiet drops Celery's banner: the agent prints its own summary, and each assignment is logged.
    app.worker_main(
        [
            "--quiet",
            "worker",
            "--pool=prefork",
            f"--concurrency={_config.slots}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
            f"--hostname={_config.node_name}@%h",
            f"--queues={_config.queue}",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
