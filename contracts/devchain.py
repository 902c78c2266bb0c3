"""A local chain for development and tests, Anvil or Hardhat Network: started on a free port of 127.0.0.1,
stopped on exit.

`ETH_RPC_URL` points everything at another chain instead (the callers decide; see `rpc_url_or_start`).
Anvil is the default (`start()`); `start(engine="hardhat")` runs `hardhat node` with the repository's
hardhat.config.js (hardfork prague, chain id 31337, the same development accounts). Both run the committed
artifacts unchanged. Ganache cannot: it has no transient storage (EIP-1153), which OpenZeppelin's
ReentrancyGuardTransient needs.
Anvil always runs with `--prune-history`: without it, it writes gigabytes of old states under ~/.foundry. It keeps
the last PRUNED_STATES states in memory: with none kept, a call on "latest" that races a newly mined block is
answered `BlockOutOfRangeError: block height is N but requested was N-1` (seen on CI; about 1 call in 100 while
transactions are mined back to back).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from eth_account.hdaccount import key_from_seed, seed_from_mnemonic

from contracts.errors import DevChainError

ANVIL_CHAIN_ID = 31337
Engine = Literal["anvil", "hardhat"]
ENGINES: tuple[Engine, ...] = ("anvil", "hardhat")
_ENGINE_NAMES = {"anvil": "Anvil", "hardhat": "Hardhat Network"}
# Seconds to wait for the first answer: Hardhat loads a few hundred node modules first (about 3 s here).
_START_TIMEOUTS = {"anvil": 30.0, "hardhat": 60.0}
# Chains whose funds are play money: the faucet works only there. 31337 is Anvil's and Hardhat's default.
LOCAL_CHAIN_IDS = frozenset({ANVIL_CHAIN_ID})
# Anvil's well-known development mnemonic; its keys are public, so use them on local chains only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_ACCOUNTS = 10
# Seconds between Anvil's state dumps (--state-interval), besides the one on exit.
STATE_INTERVAL = 1
# States Anvil keeps in memory (--prune-history N): enough that "latest" never names a state already dropped.
PRUNED_STATES = 64
_REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def dev_keys(count: int = DEV_ACCOUNTS) -> list[str]:
    """The private keys of Anvil's funded development accounts (m/44'/60'/0'/0/i of DEV_MNEMONIC)."""
    seed = seed_from_mnemonic(DEV_MNEMONIC, "")
    return ["0x" + key_from_seed(seed, f"m/44'/60'/0'/0/{i}").hex() for i in range(count)]


def anvil_path() -> Path:
    """The Anvil that `npm install` put in node_modules/, else one on PATH.

    The platform package's native binary is preferred over node_modules/.bin/anvil: that node wrapper exits at
    once on SIGTERM while Anvil is still writing its state, so waiting on it would not wait for Anvil.
    """
    node_modules = _REPO_ROOT / "node_modules"
    for native in sorted(node_modules.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(native, os.X_OK):
            return native
    wrapper = node_modules / ".bin" / "anvil"
    if wrapper.exists():
        return wrapper
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise DevChainError(f"Anvil not found in {node_modules} or on PATH: run `npm install` (or `make install`)")


def hardhat_argv() -> list[str]:
    """`node …/hardhat/internal/cli/cli.js`: Hardhat's CLI run by node itself, so the process we signal is the node.

    node_modules/.bin/hardhat is a launcher script; running the CLI directly keeps one process to wait on.
    """
    cli = _REPO_ROOT / "node_modules" / "hardhat" / "internal" / "cli" / "cli.js"
    if not cli.is_file():
        raise DevChainError(f"Hardhat not found in {cli.parent.parent.parent.parent}: run `npm install`")
    node = shutil.which("node")
    if node is None:
        raise DevChainError("node not found: install Node.js 20+ and run `npm install`")
    return [node, str(cli)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to Anvil if the Python process dies, even by kill -9.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def rpc(url: str, method: str, params: list[object] | None = None, *, timeout: float = 5.0) -> object:
    """One JSON-RPC request with the standard library (usable before web3 is set up)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a local or configured node
        answer = json.loads(response.read())
    if "error" in answer:
        raise DevChainError(f"{method} failed: {answer['error']}")
    return answer["result"]


@dataclass
class DevChain:
    """A running local chain; stop() (or leaving the `with` block) ends it (Anvil dumps state_file if set)."""

    url: str
    port: int
    chain_id: int
    process: subprocess.Popen[bytes]
    engine: Engine = "anvil"
    state_file: Path | None = None
    log_file: Path | None = None
    _lock: IO[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> DevChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (Anvil dumps its state then), SIGKILL if it is still alive after `timeout` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for handle in (self._log, self._lock):
            if handle is not None:
                handle.close()
        self._log = self._lock = None
        atexit.unregister(self.stop)
        return self.process.returncode


def _lock_state(state_file: Path) -> IO[bytes]:
    lock = (state_file.parent / (state_file.name + ".lock")).open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DevChainError(
            f"Another process runs the Anvil of {state_file} (`manage.py chain serve`?): point ETH_RPC_URL at it "
            "instead of starting a second one"
        ) from None
    return lock


def start(
    *,
    engine: Engine = "anvil",
    port: int | None = None,
    chain_id: int = ANVIL_CHAIN_ID,
    state_file: Path | None = None,
    log_file: Path | None = None,
    timeout: float | None = None,
) -> DevChain:
    """Start `engine` on `port` (default: a free one) of 127.0.0.1 and wait up to `timeout` s until it answers.

    With `state_file` (Anvil only), the chain loads that file if it exists and writes its state back on stop, so
    a deployment survives restarts; one process at a time may own a state file. Hardhat Network keeps nothing
    between runs.
    """
    if engine not in ENGINES:
        raise DevChainError(f"unknown chain engine {engine!r}: one of {', '.join(ENGINES)}")
    name = _ENGINE_NAMES[engine]
    if engine == "hardhat" and state_file is not None:
        raise DevChainError("Hardhat Network keeps no state between runs: a state file needs Anvil")
    program = [str(anvil_path())] if engine == "anvil" else hardhat_argv()
    wait = _START_TIMEOUTS[engine] if timeout is None else timeout
    lock = None
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_state(state_file)
    last_error = ""
    try:
        # A picked port is free when picked but could be taken before the chain binds it: try a few.
        for _attempt in range(1 if port else 3):
            chosen = port or _free_port()
            env = None
            if engine == "anvil":
                argv = [*program, "--host", "127.0.0.1", "--port", str(chosen), "--prune-history", str(PRUNED_STATES)]
                argv += ["--chain-id", str(chain_id), "--accounts", str(DEV_ACCOUNTS), "--quiet"]
                if state_file is not None:
                    # Dumped every STATE_INTERVAL s as well as on exit: a chain killed with SIGKILL (or a crashed
                    # machine) comes back with at most that much of its history lost, not all of it.
                    argv += ["--state", str(state_file), "--state-interval", str(STATE_INTERVAL)]
            else:
                argv = [*program, "node", "--hostname", "127.0.0.1", "--port", str(chosen)]
                argv += ["--config", str(_REPO_ROOT / "hardhat.config.js")]
                # The config reads the chain id from here; the prompt would wait for a terminal that is not there.
                env = {
                    **os.environ,
                    "HASHWORK_HARDHAT_CHAIN_ID": str(chain_id),
                    "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true",
                }
            chain = _launch(argv, chosen, chain_id, state_file, log_file, wait, engine=engine, env=env)
            if isinstance(chain, DevChain):
                chain._lock = lock
                return chain
            last_error = chain
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    if lock is not None:
        lock.close()
    raise DevChainError(f"{name} did not start: {last_error}")


def start_hardhat(
    *, port: int | None = None, chain_id: int = ANVIL_CHAIN_ID, log_file: Path | None = None, timeout: float = 60.0
) -> DevChain:
    """start(engine="hardhat"): Hardhat Network (`hardhat node`, hardfork prague) on a free port of 127.0.0.1."""
    return start(engine="hardhat", port=port, chain_id=chain_id, log_file=log_file, timeout=timeout)


def _launch(
    argv: list[str],
    port: int,
    chain_id: int,
    state_file: Path | None,
    log_file: Path | None,
    timeout: float,
    *,
    engine: Engine,
    env: dict[str, str] | None,
) -> DevChain | str:
    # The chain's output goes to a file (a pipe nobody reads could fill up and block it): the log, or a temporary one.
    log: IO[bytes] = log_file.open("ab") if log_file else tempfile.TemporaryFile()  # noqa: SIM115 - DevChain closes it
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        # Hardhat finds its node_modules from the repository; Anvil keeps the caller's directory (relative paths).
        cwd=_REPO_ROOT if engine == "hardhat" else None,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    chain = DevChain(
        url=url,
        port=port,
        chain_id=chain_id,
        process=process,
        engine=engine,
        state_file=state_file,
        log_file=log_file,
        _log=log,
    )
    atexit.register(chain.stop)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace").strip()[-2000:]
            chain.stop()
            return f"exit code {process.returncode}: {output}"
        try:
            answered = rpc(url, "eth_chainId", timeout=1.0)
        except (OSError, DevChainError):
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
            continue
        if int(str(answered), 16) != chain_id:
            chain.stop()
            return f"something else answers on port {port} (chain id {answered})"
        return chain
    chain.stop()
    return f"no answer on {url} within {timeout}s"


@contextlib.contextmanager
def rpc_url_or_start(
    eth_rpc_url: str | None,
    *,
    state_file: Path | None = None,
    log_file: Path | None = None,
    engine: Engine = "anvil",
) -> Iterator[str]:
    """Yield `eth_rpc_url` when set; else start a DevChain for the duration of the block and yield its URL."""
    if eth_rpc_url:
        yield eth_rpc_url
        return
    with start(engine=engine, state_file=state_file, log_file=log_file) as chain:
        yield chain.url
