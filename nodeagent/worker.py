"""The agent's Celery worker: consumes only this node's queue, inside its own key prefix, and runs each
assignment in a child process. Started by `nodeagent run` as `python -m nodeagent.worker CONFIG`. Its broker
connection (reconnecting, probing, reporting to the agent) is nodeagent.broker's."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from nodeagent import broker, child
from nodeagent import config as agent_config
from nodeagent.client import ApiError, Conflict, MarketplaceClient
from nodeagent.retry import TransientError
from nodeagent.signer import Wallet
from protocol import AssignmentMessage, ProtocolError

logger = logging.getLogger("nodeagent.worker")
TASK_NAME = "nodeagent.run_assignment"
MAX_TASKS_PER_CHILD = 50

_config: agent_config.AgentConfig | None = None


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
        client.start(assignment_id)
    except Conflict as exc:
        logger.info("assignment %s not started: %s", assignment_id, exc.message)
        return "skipped"
    except (ApiError, TransientError) as exc:
        logger.warning("assignment %s: could not start (%s); its lease will expire", assignment_id, exc)
        return "unreachable"
    marker = running_dir(cfg) / assignment_id
    workdir = Path(tempfile.mkdtemp(prefix=f"{assignment_id}-", dir=cfg.state / "work"))
    try:
        outcome = _fetch_inputs(client, assignment, workdir) or _run_child(cfg, assignment, workdir, marker)
        if outcome is not None:
            with contextlib.suppress(Conflict):
                client.fail(assignment_id, outcome)
            logger.warning("assignment %s failed: %s", assignment_id, outcome.splitlines()[-1] if outcome else "")
            return "failed"
        artifact = workdir / "artifact"
        sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
        signature = Wallet(cfg.wallet_key).sign_result(assignment_id, sha256)
        metrics = (workdir / "metrics.json").read_text()
        client.submit(assignment_id, artifact=artifact, sha256=sha256, signature=signature, metrics=metrics)
        logger.info("assignment %s submitted (sha256 %s)", assignment_id, sha256[:12])
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


def _fetch_inputs(client: MarketplaceClient, message: AssignmentMessage, workdir: Path) -> str | None:
    """Download the assignment's input files into WORKDIR/inputs/ and check their hashes; None when all are there."""
    inputs = workdir / "inputs"
    for item in message.input_urls:
        relative = Path(item.path)
        if relative.is_absolute() or ".." in relative.parts:
            return f"input path {item.path!r} leaves the working directory"
        target = inputs / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download(item.url, target)
        except (ApiError, TransientError) as exc:
            return f"cannot fetch input {item.path}: {exc}"
        if hashlib.sha256(target.read_bytes()).hexdigest() != item.sha256:
            return f"input {item.path} does not match its sha256"
    return None


def _run_child(cfg: agent_config.AgentConfig, message: AssignmentMessage, workdir: Path, marker: Path) -> str | None:
    """Run the runner in a forked child until it ends; None on success, else why it failed. Heartbeats keep a
    running lease alive; when the marketplace revokes it (cancelled, expired), the heartbeat loop kills the child."""
    payload_file = workdir / "payload.json"
    payload_file.write_text(json.dumps(message.payload))
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
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    if timed_out.is_set():
        how = f"ran past the {message.kind} time limit of {limit:.0f}s and was killed"
    elif code < 0:
        how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"the {message.kind} runner {how} after {time.monotonic() - started:.1f}s:\n{tail}"


def main(argv: list[str]) -> None:
    global _config
    path = Path(argv[0])
    slots = int(argv[1]) if len(argv) > 1 else None
    _config = agent_config.load(path).with_limits(slots=slots)
    broker.configure(_config)
    (_config.state / "work").mkdir(parents=True, exist_ok=True)
    running_dir(_config).mkdir(parents=True, exist_ok=True)
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
