"""`nodeagent`: enrol this machine as a Hashwork node, check its hardware, run it, pause it, see its status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from contracts.units import tokens_format, tokens_parse
from nodeagent import config as agent_config
from nodeagent import probe, sandbox
from nodeagent.client import ApiError, MarketplaceClient
from nodeagent.retry import TransientError
from nodeagent.signer import Wallet

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class CliError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _default_name() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-._") or "node"
    return name if NAME_RE.match(name) else "node"


def _min_prices(items: list[str]) -> dict[str, str]:
    prices: dict[str, str] = {}
    for item in items:
        kind, _, amount = item.partition("=")
        if not kind or not amount.isdigit():
            raise CliError(f"--min-price {item!r}: use KIND=AMOUNT in token base units, e.g. benchmark=1000")
        prices[kind] = amount
    return prices


def cmd_enroll(args: argparse.Namespace, path: Path) -> int:
    if path.exists() and not args.force:
        raise CliError(f"{path} already holds a node config; pass --force to enrol again and replace it.")
    if not NAME_RE.match(args.name):
        raise CliError(f"--name {args.name!r}: use 1-64 letters, digits, '.', '_' or '-'.")
    if args.key_file:
        try:
            key = Path(args.key_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"--key-file {args.key_file}: {exc}") from exc
        if not KEY_RE.match(key):
            raise CliError(f"--key-file {args.key_file}: expected a 32-byte hex private key (0x…).")
        wallet = Wallet(key)
    else:
        wallet = Wallet.create()
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else path.parent / f"{path.stem}-state"
    capabilities = probe.probe()
    client = MarketplaceClient(args.marketplace, token=args.token, scheme="Token")
    try:
        reply = client.enroll(
            name=args.name,
            wallet_address=wallet.address,
            capabilities=capabilities,
            slots=args.slots,
            min_price=_min_prices(args.min_price or []),
        )
    except ApiError as exc:
        fields = (exc.body or {}).get("extra", {}).get("fields", {}) if isinstance(exc.body, dict) else {}
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
        raise CliError(f"The marketplace refused the enrolment: {exc.message} {detail}".strip()) from exc
    except TransientError as exc:
        raise CliError(f"Cannot reach the marketplace at {args.marketplace}: {exc}") from exc
    node = reply["node"]
    if not reply.get("broker_url"):
        raise CliError("The marketplace returned no broker credentials; it may be too old for this agent.")
    cfg = agent_config.AgentConfig(
        marketplace_url=args.marketplace.rstrip("/"),
        node_id=node["id"],
        node_name=node["name"],
        token=reply["token"],
        broker_url=reply["broker_url"],
        broker_prefix=reply["broker_prefix"],
        queue=f"node.{node['id'].replace('-', '')}",
        wallet_key=wallet.private_key,
        wallet_address=wallet.address,
        state_dir=str(state_dir),
        slots=args.slots,
        sandbox=args.sandbox,
        sandbox_image=args.sandbox_image,
    )
    agent_config.validate(cfg)
    agent_config.save(cfg, path)
    print(f"Enrolled node {cfg.node_name} ({cfg.node_id}).")
    print(f"Wallet address: {wallet.address}  (payouts go here; the key is in {path}, readable only by you)")
    print("Start it with: nodeagent run")
    return 0


def cmd_probe(args: argparse.Namespace, path: Path) -> int:
    image = args.sandbox_image
    if image is None:
        try:
            image = agent_config.load(path).sandbox_image
        except agent_config.ConfigError:
            image = agent_config.DEFAULT_SANDBOX_IMAGE
    capabilities = probe.probe(sandbox_image=image)
    print(json.dumps(capabilities, indent=2) if args.json else probe.describe(capabilities))
    return 0


def cmd_run(args: argparse.Namespace, path: Path) -> int:
    from nodeagent.agent import Agent

    cfg = agent_config.load(path).with_limits(
        slots=args.slots,
        max_gpus=args.max_gpus,
        max_temp_c=args.max_temp,
        power_cap_w=args.power_cap,
        heartbeat_seconds=args.heartbeat_seconds,
        # NODEAGENT_SANDBOX: the same choice for agents started by scripts or containers (the flag wins).
        sandbox=args.sandbox or os.environ.get("NODEAGENT_SANDBOX") or None,
        sandbox_image=args.sandbox_image,
    )
    agent_config.validate(cfg)
    if args.slots is not None:
        # The worker process reads the config file: keep the operator's limits there too.
        agent_config.save(cfg, path)
    try:
        return Agent(cfg, path).run()
    except sandbox.SandboxError as exc:
        raise CliError(str(exc)) from exc


def cmd_health(args: argparse.Namespace, path: Path) -> int:
    from nodeagent.agent import health

    try:
        ok, reason = health(agent_config.load(path))
    except agent_config.ConfigError as exc:
        ok, reason = False, str(exc)
    print(reason if ok else f"unhealthy: {reason}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace, path: Path) -> int:
    cfg = agent_config.load(path)
    client = MarketplaceClient(cfg.marketplace_url, token=cfg.token)
    try:
        node = client.me()
        assignments = client.my_assignments(limit=args.limit)
        earnings = client.earnings()
    except (ApiError, TransientError) as exc:
        raise CliError(f"Cannot get this node's status from {cfg.marketplace_url}: {exc}") from exc
    local = "paused (nodeagent resume to take work again)" if (cfg.state / "paused").exists() else "taking work"
    print(f"Node {node['name']} ({node['id']})")
    print(f"  online: {'yes' if node['is_online'] else 'no'}; locally {local}")
    used = sandbox.state_read(cfg.state)
    print(
        f"  sandbox: {used.describe()}"
        if used is not None
        else f"  sandbox: not known yet (the agent has not run here; configured: {cfg.sandbox})"
    )
    print(f"  accepted {node['valid_count']}, rejected {node['invalid_count']}, expired {node['expired_count']}")
    credit = earnings["credit"]
    credit_text = "credit unknown (no chain)" if credit is None else f"{tokens_format(int(credit))} HWC withdrawable"
    settled, pending = tokens_format(int(earnings["settled"])), tokens_format(int(earnings["pending"]))
    print(f"  earned {settled} HWC settled, {pending} HWC pending; {credit_text} to {cfg.wallet_address}")
    current = [a for a in assignments if a["state"] in ("leased", "running")]
    print(f"  current assignments: {len(current)}")
    print("  recent assignments:" if assignments else "  no assignments yet")
    for a in assignments:
        progress = a.get("progress")
        done = f" ({progress['done']}/{progress['total']})" if progress and a["state"] == "running" else ""
        print(f"    {a['id']}  {a['kind']} job {a['job']} task {a['task_index']}: {a['state']}{done}")
    return 0


def _amount(raw: str) -> int:
    try:
        base = tokens_parse(raw)
    except ValueError as exc:
        raise CliError(f"AMOUNT: {exc}; give a positive number of tokens, for example 12.5.") from None
    if base <= 0:
        raise CliError(f"AMOUNT {raw!r} must be a positive number of tokens (for example 12.5).")
    return base


def cmd_withdraw(args: argparse.Namespace, path: Path) -> int:
    from nodeagent.withdraw import WithdrawError, withdraw

    cfg = agent_config.load(path)
    amount = _amount(args.amount) if args.amount is not None else None
    try:
        print(withdraw(cfg, amount, args.rpc_url))
    except WithdrawError as exc:
        raise CliError(str(exc)) from exc
    return 0


def cmd_pause(args: argparse.Namespace, path: Path) -> int:
    cfg = agent_config.load(path)
    cfg.state.mkdir(parents=True, exist_ok=True)
    (cfg.state / "paused").touch()
    print("Paused: running assignments finish; new ones are handed back. `nodeagent resume` takes work again.")
    return 0


def cmd_resume(args: argparse.Namespace, path: Path) -> int:
    cfg = agent_config.load(path)
    (cfg.state / "paused").unlink(missing_ok=True)
    print("Resumed: taking new work.")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="nodeagent",
        description="Run this machine as a Hashwork node: take compute work from the marketplace and get paid "
        "for verified results.",
    )
    main.add_argument(
        "--config",
        help=f"node config file (default: $HASHWORK_AGENT_CONFIG or {agent_config.DEFAULT_PATH})",
    )
    main.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enroll = sub.add_parser("enroll", help="register this machine with a marketplace and write its config")
    enroll.add_argument("--marketplace", required=True, metavar="URL", help="marketplace address, e.g. https://…")
    enroll.add_argument("--token", required=True, help="your operator API token (from your profile)")
    enroll.add_argument("--name", default=_default_name(), help="node name (default: the host name)")
    enroll.add_argument("--key-file", metavar="K", help="import this wallet private key instead of making one")
    enroll.add_argument("--slots", type=_positive, default=1, help="assignments run at once (default 1)")
    enroll.add_argument(
        "--min-price", action="append", metavar="KIND=AMOUNT", help="lowest price per task you accept (repeatable)"
    )
    enroll.add_argument("--state-dir", help="where running work lives (default: beside the config)")
    _sandbox_options(enroll, default=True)
    enroll.add_argument("--force", action="store_true", help="replace an existing config")
    enroll.set_defaults(func=cmd_enroll)

    probe_cmd = sub.add_parser("probe", help="show the hardware and software this node reports")
    probe_cmd.add_argument("--json", action="store_true", help="print JSON, as sent to the marketplace")
    probe_cmd.add_argument(
        "--sandbox-image", metavar="IMAGE", help="check the Docker sandbox with this image (default: as configured)"
    )
    probe_cmd.set_defaults(func=cmd_probe)

    run = sub.add_parser("run", help="run the node until Ctrl-C or SIGTERM")
    run.add_argument("--slots", type=_positive, help="assignments run at once (default: as enrolled)")
    run.add_argument("--max-gpus", type=int, help="use at most this many GPUs")
    run.add_argument("--max-temp", type=int, metavar="C", help="take no new work while a GPU is this hot (°C)")
    run.add_argument("--power-cap", type=int, metavar="W", help="set each GPU's power limit (watts; needs root)")
    run.add_argument("--heartbeat-seconds", type=float, help="seconds between heartbeats (default 10)")
    _sandbox_options(run, default=False)
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="node id, online state, current and recent assignments")
    status.add_argument("--limit", type=_positive, default=10, help="recent assignments to show (default 10)")
    status.set_defaults(func=cmd_status)

    withdraw = sub.add_parser("withdraw", help="move your earned credit from the escrow to your wallet")
    withdraw.add_argument("amount", nargs="?", metavar="AMOUNT", help="tokens to withdraw (default: all of it)")
    withdraw.add_argument("--rpc-url", help="your own JSON-RPC URL (default: the one the marketplace names)")
    withdraw.set_defaults(func=cmd_withdraw)

    health = sub.add_parser(
        "health", help="exit 0 while the agent runs and its worker consumes its queue, else 1 with the reason"
    )
    health.set_defaults(func=cmd_health)

    sub.add_parser("pause", help="take no new work (running work finishes)").set_defaults(func=cmd_pause)
    sub.add_parser("resume", help="take new work again").set_defaults(func=cmd_resume)
    return main


def _sandbox_options(command: argparse.ArgumentParser, *, default: bool) -> None:
    where = "" if default else " (default: as enrolled)"
    command.add_argument(
        "--sandbox",
        choices=agent_config.SANDBOX_CHOICES,
        default="auto" if default else None,
        help="what each assignment runs in: auto (a Docker container when Docker works here, else a forked child), "
        "docker (refuse to run without it) or none (a forked child, unsandboxed)"
        + (" (default: $NODEAGENT_SANDBOX, else as enrolled)" if not default else " (default auto)"),
    )
    command.add_argument(
        "--sandbox-image",
        metavar="IMAGE",
        default=agent_config.DEFAULT_SANDBOX_IMAGE if default else None,
        help="the image sandbox containers start from" + (where or f" (default {agent_config.DEFAULT_SANDBOX_IMAGE})"),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    path = agent_config.config_path(args.config)
    try:
        code: int = args.func(args, path)
        return code
    except (CliError, agent_config.ConfigError) as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return 2


def entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    entry()
