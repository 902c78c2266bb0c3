"""`nodeagent run`: the daemon. Heartbeats (capabilities, free slots, running assignments, the worker's broker
connection) in this process, the Celery worker in a child; SIGTERM/SIGINT hand running work back so it is re-leased
at once. A heartbeat saying the worker cannot reach the broker makes the marketplace lease nothing to this node and
make its broker user again (a Redis restart loses it); the worker then logs in again with the same credentials."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from nodeagent import probe, progress, sandbox
from nodeagent.broker import STARTING, broker_health, broker_health_path
from nodeagent.client import ApiError, MarketplaceClient
from nodeagent.config import AgentConfig
from nodeagent.retry import TransientError
from nodeagent.worker import paused, running_dir
from protocol import BrokerHealth, Heartbeat, Progress, ProtocolError

logger = logging.getLogger("nodeagent")


ALIVE_FILE = "agent-alive.json"


class Running(NamedTuple):
    pid: int | None
    workdir: Path | None
    # The sandbox container's name when the assignment runs in one (then pid is None).
    container: str | None = None


def health(cfg: AgentConfig, now: float | None = None) -> tuple[bool, str]:
    """`nodeagent health`: ok while the agent's loop runs (it stamps STATE/agent-alive.json every heartbeat, after
    checking its worker lives) and the worker consumes its queue (the broker health file it keeps); else why not."""
    try:
        stamp = json.loads((cfg.state / ALIVE_FILE).read_text())
        age = (now or time.time()) - float(stamp["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, "the agent is not running (it has left no heartbeat stamp): start it with `nodeagent run`"
    allowed = max(60.0, 3 * cfg.heartbeat_seconds)
    if age > allowed:
        return False, f"the agent's loop has not run for {age:.0f}s (more than {allowed:.0f}s): is it stuck?"
    consuming = broker_health(cfg)
    if not consuming.ok:
        return False, f"the worker is not consuming its queue: {consuming.error}"
    return True, f"ok: the worker consumes {cfg.queue}"


class Agent:
    def __init__(self, cfg: AgentConfig, config_file: Path, out: Any = sys.stdout) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.out = out
        self.client = MarketplaceClient(cfg.marketplace_url, token=cfg.token)
        self.stop = threading.Event()
        self.worker: subprocess.Popen[bytes] | None = None
        cfg.state.mkdir(parents=True, exist_ok=True)
        self.capabilities = probe.probe(cfg.state)
        if cfg.max_gpus is not None:
            self.capabilities["max_gpus"] = cfg.max_gpus
        self._hot = False
        self._broker: BrokerHealth | None = None
        self.sandbox: sandbox.Sandbox | None = None

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def running(self) -> dict[str, Running]:
        """Assignments running now (from the worker's marker files): their runner pids and workdirs."""
        found: dict[str, Running] = {}
        for marker in running_dir(self.cfg).glob("*"):
            try:
                text = marker.read_text().strip()
            except OSError:
                continue
            try:
                value = json.loads(text) if text else {}
                pid = int(value["pid"]) if value.get("pid") is not None else None
                container = str(value["container"]) if value.get("container") else None
                found[marker.name] = Running(pid, Path(value["workdir"]), container)
            except (ValueError, KeyError, TypeError, AttributeError):
                # Written a moment ago and still empty: running, but nothing to stop or read yet.
                found[marker.name] = Running(None, None)
        return found

    def accepting(self) -> bool:
        if paused(self.cfg):
            return False
        if self.cfg.max_temp_c is not None:
            temps = probe.gpu_temperatures()
            hot = any(t >= self.cfg.max_temp_c for t in temps)
            if hot != self._hot:
                self._hot = hot
                self.say(
                    f"GPU temperature {max(temps)} °C ≥ {self.cfg.max_temp_c} °C: taking no new work"
                    if hot
                    else "GPUs cooled down: taking work again"
                )
            return not hot
        return True

    def broker(self) -> BrokerHealth:
        """The worker's broker connection, as it last recorded it; said once each time it changes."""
        health = broker_health(self.cfg)
        was, self._broker = self._broker, health
        if was is not None and was.ok != health.ok:
            self.say(
                "The worker is consuming its queue again"
                if health.ok
                else f"The worker lost the broker ({health.error}); the marketplace leases this node nothing meanwhile"
            )
        elif not health.ok and health.error != STARTING and (was is None or was.error != health.error):
            logger.warning("the worker cannot reach the broker: %s", health.error)
        return health

    def heartbeat(self) -> None:
        running = self.running()
        beat = Heartbeat(
            capabilities=self.capabilities,
            free_slots=max(0, self.cfg.slots - len(running)),
            accepting=self.accepting(),
            load=os.getloadavg()[0],
            running=list(running),
            progress={
                assignment_id: Progress(done=done[0], total=done[1])
                for assignment_id, item in running.items()
                if item.workdir is not None and (done := progress.read(item.workdir)) is not None
            },
            broker=self.broker(),
        )
        reply = self.client.heartbeat(beat)
        if reply.withdraw:
            # Asked from the dashboard: withdraw in the background, so heartbeats go on while the chain confirms.
            threading.Thread(target=self._withdraw, name="withdraw", daemon=True).start()
        for assignment_id in reply.revoked:
            item = running.get(assignment_id)
            # The marketplace cancelled or expired it: stop the runner, nobody will take its result.
            if item is not None and item.container:
                # SIGKILL: a revoked result is worth nothing, and a task may ignore SIGTERM.
                sandbox.kill(item.container)
                self.say(f"assignment {assignment_id} was revoked by the marketplace; killed its container")
            elif item is not None and item.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(item.pid, signal.SIGTERM)
                self.say(f"assignment {assignment_id} was revoked by the marketplace; stopped its runner")

    def _withdraw(self) -> None:
        from nodeagent.withdraw import WithdrawError, withdraw

        self.say("The operator asked for a withdrawal from the dashboard…")
        try:
            self.say(withdraw(self.cfg))
        except WithdrawError as exc:
            self.say(f"Withdrawal not done: {exc}")
        except Exception:
            logger.exception("the withdrawal failed")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop.set()

    def start_worker(self) -> None:
        # The worker runs what the agent chose (docker or none, never auto): both say the same at start.
        box = self.sandbox or sandbox.Sandbox("none", reason="not chosen")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "nodeagent.worker", str(self.config_file), str(self.cfg.slots), box.mode,
             box.image or self.cfg.sandbox_image],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def stamp_alive(self) -> None:
        path = self.cfg.state / ALIVE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time()}))
            tmp.replace(path)

    def run(self) -> int:
        """Run until stopped; raises sandbox.SandboxError (before doing anything) when --sandbox docker cannot be."""
        cfg = self.cfg
        cfg.state.mkdir(parents=True, exist_ok=True)
        # With its state folder: one test container proves the engine mounts the agent's workdirs as they are here.
        self.sandbox = sandbox.choose(cfg.sandbox, cfg.sandbox_image, state=cfg.state)
        for directory in (cfg.state / "work", running_dir(cfg)):
            directory.mkdir(parents=True, exist_ok=True)
        for stale in running_dir(cfg).glob("*"):
            stale.unlink(missing_ok=True)
        # A previous run's records say nothing of the worker about to start.
        broker_health_path(cfg).unlink(missing_ok=True)
        (cfg.state / ALIVE_FILE).unlink(missing_ok=True)
        if self.sandbox.mode == "docker":
            sandbox.remove_all(cfg.node_id)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.say(f"Node {cfg.node_name} ({cfg.node_id}) for {cfg.marketplace_url}")
        self.say(f"  wallet {cfg.wallet_address}, {cfg.slots} slot(s), queue {cfg.queue}")
        gpus = self.capabilities["gpus"]
        self.say(f"  GPUs: {len(gpus)}" if gpus else f"  GPUs: none ({self.capabilities['no_gpu_reason']})")
        if not gpus and (cfg.max_temp_c is not None or cfg.power_cap_w is not None or cfg.max_gpus):
            self.say("  --max-temp, --power-cap and --max-gpus do nothing on a machine without an NVIDIA GPU")
        if self.sandbox.mode == "docker":
            self.say(f"  sandbox: {self.sandbox.describe()}: each assignment in its own container, no network")
        else:
            self.say(f"  sandbox: {self.sandbox.describe()}")
            if cfg.sandbox == "auto":
                self.say("  (runners see this user's files and the network; --sandbox docker refuses to run so)")
        if gpus and cfg.power_cap_w is not None:
            for line in probe.apply_power_cap(cfg.power_cap_w):
                self.say(f"  {line}")
        try:
            self.heartbeat()
        except (ApiError, TransientError) as exc:
            self.say(f"The marketplace refused this node: {exc}. Check the URL, or enrol again.")
            return 1
        except ProtocolError as exc:
            self.say(f"The marketplace's heartbeat reply cannot be read: {exc}. Is the URL a Hashwork marketplace?")
            return 1
        self.leftovers_release()
        self.start_worker()
        self.say("Running; Ctrl-C or SIGTERM stops it and hands running work back.")
        self.stamp_alive()
        code = 0
        while not self.stop.wait(cfg.heartbeat_seconds):
            assert self.worker is not None
            if self.worker.poll() is not None:
                self.say(f"The worker exited with code {self.worker.returncode}; stopping.")
                code = 1
                break
            self.stamp_alive()
            try:
                self.heartbeat()
            except (ApiError, TransientError, ProtocolError) as exc:
                logger.warning("heartbeat failed: %s", exc)
        self.shutdown()
        return code

    def leftovers_release(self) -> None:
        """A starting agent runs nothing, so whatever the marketplace still counts as this node's (a previous run
        that crashed or was killed) is handed back now: released at once for other nodes (or this one) instead of
        expiring against the node, which would also block it from those jobs. A failure here only leaves them to
        their leases."""
        try:
            released = self.client.release_all(accepting=self.accepting())
        except (ApiError, TransientError, ProtocolError, KeyError, ValueError) as exc:
            logger.warning("could not hand back what a previous run left: %s", exc)
            return
        if released:
            self.say(f"  handed back {released} assignment(s) a previous run left unfinished")

    def shutdown(self) -> None:
        """Hand everything back first (so nothing a dying runner reports counts against us), then stop."""
        self.say("Stopping: handing running work back to the marketplace…")
        try:
            released = self.client.release_all(accepting=False)
            self.say(f"  handed back {released} assignment(s)")
        except (ApiError, TransientError) as exc:
            self.say(f"  could not hand work back ({exc}); its leases will expire instead")
        if self.worker is not None and self.worker.poll() is None:
            # SIGQUIT is Celery's cold shutdown: do not wait for running assignments, they were handed back.
            self.worker.send_signal(signal.SIGQUIT)
            try:
                self.worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        for item in self.running().values():
            if item.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(item.pid, signal.SIGKILL)
        if self.sandbox is not None and self.sandbox.mode == "docker":
            # A cold-stopped worker leaves its containers running: they are this node's, by label.
            sandbox.remove_all(self.cfg.node_id)
        (self.cfg.state / ALIVE_FILE).unlink(missing_ok=True)
        self.say("Stopped.")
