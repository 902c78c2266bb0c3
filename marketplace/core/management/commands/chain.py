"""`python manage.py chain deploy|faucet|status|serve`: the escrow contracts on the configured chain."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from web3 import Web3

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import DEFAULT_FEE_BPS, Deployment, deploy, load_deployment
from contracts.errors import ChainError
from contracts.sender import Sender, parse_private_key
from contracts.units import tokens_format
from marketplace.core.exceptions import ApplicationError
from marketplace.jobs.models import Job, JobState
from marketplace.payments.services import escrow_bind, escrow_deadline_min, escrow_key, funding_required, funding_terms

DEPLOYER_KEY_VARIABLE = "HASHWORK_DEPLOYER_KEY"
DECIMALS = 18
UNIT = 10**DECIMALS
LOCAL_CHAINS = ", ".join(str(chain_id) for chain_id in sorted(devchain.LOCAL_CHAIN_IDS))


def _state_file() -> Path:
    return Path(settings.CHAIN_DIR) / "anvil-state.json"


def parse_address(raw: str, *, argument: str) -> str:
    """A checksummed address, or a CommandError that names the argument."""
    value = raw.strip()
    if not Web3.is_address(value):
        raise CommandError(f"{argument} {raw!r} is not an Ethereum address (0x followed by 40 hex digits).")
    if value != value.lower() and value[2:] != value[2:].upper() and not Web3.is_checksum_address(value):
        raise CommandError(f"{argument} {raw!r} has a wrong checksum (mixed case): check it for a typo.")
    return Web3.to_checksum_address(value)


def parse_token_amount(raw: str, *, argument: str, allow_zero: bool = False) -> int:
    """A token amount ("100", "0.5") in base units (18 decimals), or a CommandError naming the argument."""
    try:
        value = Decimal(raw.strip().replace("_", ""))
    except InvalidOperation:
        raise CommandError(f"{argument} {raw!r} is not a number of tokens (for example 100 or 0.5).") from None
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise CommandError(f"{argument} {raw!r} must be a {'' if allow_zero else 'positive '}number.")
    base_units = value * UNIT
    if base_units != base_units.to_integral_value():
        raise CommandError(f"{argument} {raw!r} has more than {DECIMALS} decimals.")
    return int(base_units)


class Command(BaseCommand):
    help = (
        "Manage Hashwork's contracts (ComputeToken and JobEscrow) on the chain named by ETH_RPC_URL. Without "
        "ETH_RPC_URL, each call starts the project's own Anvil (chain id 31337) whose state is kept in "
        "CHAIN_DIR/anvil-state.json, so what `deploy` puts there is still there for the next call; `serve` keeps "
        "that Anvil running for other processes. The deployer key comes from HASHWORK_DEPLOYER_KEY (required on "
        "other chains; on a local chain it defaults to Anvil's first development account). Deployments are "
        "recorded per chain id in CHAIN_DEPLOYMENTS_FILE."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(
            dest="action", metavar="ACTION", required=True, help="deploy, faucet, fund-dev, status or serve"
        )

        deploy_parser = actions.add_parser(
            "deploy",
            help="deploy ComputeToken and JobEscrow and record them in the deployments file",
            description="Deploy ComputeToken (unless --token names one) and JobEscrow from the deployer key, grant "
            "PAYOUT_ROLE to the operator, and record the addresses under the chain id in CHAIN_DEPLOYMENTS_FILE.",
        )
        deploy_parser.add_argument(
            "--fee-bps",
            type=int,
            default=DEFAULT_FEE_BPS,
            help=f"fee on each payout in basis points, 0-1000 (default {DEFAULT_FEE_BPS} = 2.5 %%)",
        )
        deploy_parser.add_argument("--treasury", help="address credited the fees (default: the deployer)")
        deploy_parser.add_argument(
            "--operator", help="address given PAYOUT_ROLE, the marketplace's settlement key (default: the deployer)"
        )
        deploy_parser.add_argument("--token", help="use this existing ComputeToken instead of deploying one")

        faucet_parser = actions.add_parser(
            "faucet",
            help="mint tokens (and some ETH for gas) to an address; local chains only",
            description="Mint AMOUNT tokens to ADDRESS with the deployer's minter role and top its ETH up to --eth. "
            f"Refused on any chain but a local one (chain id {LOCAL_CHAINS}).",
        )
        faucet_parser.add_argument("address", metavar="ADDRESS", help="who receives the tokens")
        faucet_parser.add_argument("amount", metavar="AMOUNT", help="tokens to mint, e.g. 100 or 0.5 (18 decimals)")
        faucet_parser.add_argument(
            "--eth", default="1", help="top ADDRESS's ETH balance up to this many ETH for gas (default 1; 0 = none)"
        )

        fund_parser = actions.add_parser(
            "fund-dev",
            help="fund a job in the escrow from a dev account; local chains only",
            description="Mint the tokens a job still needs (every replica's price plus the fee) to a development "
            "account, approve the escrow and fund the job, as its poster would. The marketplace starts the job once "
            f"it sees the deposit. Refused on any chain but a local one (chain id {LOCAL_CHAINS}).",
        )
        fund_parser.add_argument("job_id", metavar="JOB_ID", help="the marketplace job's id")
        fund_parser.add_argument(
            "--account", type=int, default=1, help="which Anvil development account funds it (default 1)"
        )
        fund_parser.add_argument(
            "--extra", default="0", help="tokens to add beyond what the job needs (refunded if unspent; default 0)"
        )

        status_parser = actions.add_parser(
            "status",
            help="show the chain, the recorded deployment and balances",
            description="Print the chain id, the recorded contract addresses, the escrow's holdings and settings, "
            "and the ETH, token and escrow-credit balances of the deployer, the treasury and any ADDRESS given.",
        )
        status_parser.add_argument("addresses", metavar="ADDRESS", nargs="*", help="more addresses to show")

        serve_parser = actions.add_parser(
            "serve",
            help="run the project's Anvil until Ctrl-C and print the ETH_RPC_URL to use",
            description="Start the project's Anvil (state in CHAIN_DIR/anvil-state.json) and keep it running until "
            "Ctrl-C or SIGTERM, so that other processes can use it through ETH_RPC_URL. Not with ETH_RPC_URL set.",
        )
        serve_parser.add_argument("--port", type=int, help="listen on this port of 127.0.0.1 (default: a free one)")

    def handle(self, *args: Any, **options: Any) -> None:
        action: str = options["action"]
        # Arguments are checked before any chain is started or called.
        if action == "faucet":
            options["address"] = parse_address(options["address"], argument="ADDRESS")
            options["amount"] = parse_token_amount(options["amount"], argument="AMOUNT")
            options["eth"] = parse_token_amount(options["eth"], argument="--eth", allow_zero=True)
        elif action == "deploy":
            if not 0 <= options["fee_bps"] <= 1000:
                raise CommandError(f"--fee-bps {options['fee_bps']} is out of range: use 0 to 1000 (10 %).")
            for name in ("treasury", "operator", "token"):
                if options[name]:
                    options[name] = parse_address(options[name], argument=f"--{name}")
        elif action == "status":
            options["addresses"] = [parse_address(a, argument="ADDRESS") for a in options["addresses"]]
        elif action == "fund-dev":
            options["job"] = self._job(options["job_id"])
            options["extra"] = parse_token_amount(options["extra"], argument="--extra", allow_zero=True)
            if not 0 <= options["account"] < devchain.DEV_ACCOUNTS:
                raise CommandError(f"--account {options['account']}: use 0 to {devchain.DEV_ACCOUNTS - 1}.")
        try:
            if action == "serve":
                self._serve(options["port"])
                return
            with self._chain() as w3:
                if action == "deploy":
                    self._deploy(w3, options)
                elif action == "faucet":
                    self._faucet(w3, options)
                elif action == "fund-dev":
                    self._fund_dev(w3, options)
                else:
                    self._status(w3, options)
        except ChainError as exc:
            raise CommandError(str(exc)) from exc

    # The chain.
    @contextmanager
    def _chain(self) -> Iterator[Web3]:
        if settings.ETH_RPC_URL:
            yield connect(settings.ETH_RPC_URL)
            return
        state_file = _state_file()
        with devchain.start(state_file=state_file, log_file=state_file.with_name("anvil.log")) as chain:
            self.stdout.write(f"Started the project's Anvil on {chain.url} (state in {state_file}).")
            yield connect(chain.url)
        self.stdout.write("Stopped the project's Anvil; its state is saved for the next call.")

    def _deployer(self, w3: Web3) -> Sender:
        raw = os.environ.get(DEPLOYER_KEY_VARIABLE, "").strip()
        chain_id = w3.eth.chain_id
        if not raw:
            if chain_id not in devchain.LOCAL_CHAIN_IDS:
                raise CommandError(
                    f"{DEPLOYER_KEY_VARIABLE} is not set. Chain {chain_id} is not a local chain: set "
                    f"{DEPLOYER_KEY_VARIABLE} to the deployer's private key (0x + 64 hex digits), funded with ETH."
                )
            return Sender(w3, devchain.dev_keys(1)[0])
        try:
            return Sender(w3, parse_private_key(raw, name=DEPLOYER_KEY_VARIABLE))
        except ChainError as exc:
            raise CommandError(str(exc)) from exc

    def _deployment(self, w3: Web3) -> Deployment:
        chain_id = w3.eth.chain_id
        path = Path(settings.CHAIN_DEPLOYMENTS_FILE)
        deployment = load_deployment(path, chain_id)
        for name, address in (("ComputeToken", deployment.token), ("JobEscrow", deployment.escrow)):
            if not w3.eth.get_code(address):
                raise CommandError(
                    f"{path} records {name} at {address} on chain {chain_id}, but there is no code there (the chain "
                    "was reset?): run `python manage.py chain deploy` again."
                )
        return deployment

    # Actions.
    def _deploy(self, w3: Web3, options: dict[str, Any]) -> None:
        admin = self._deployer(w3)
        path = Path(settings.CHAIN_DEPLOYMENTS_FILE)
        deployment = deploy(
            w3,
            admin,
            options["treasury"] or admin.address,
            options["fee_bps"],
            operator=options["operator"],
            token=options["token"],
            deployments_file=path,
        )
        self.stdout.write(
            f"Deployed on chain {deployment.chain_id} at block {deployment.block_number}:\n"
            f"  ComputeToken  {deployment.token}\n"
            f"  JobEscrow     {deployment.escrow}  (fee {deployment.fee_bps} bps)\n"
            f"  admin         {deployment.admin}\n"
            f"  operator      {deployment.operator}  (PAYOUT_ROLE)\n"
            f"  treasury      {deployment.treasury}\n"
            f"Recorded in {path}."
        )

    def _faucet(self, w3: Web3, options: dict[str, Any]) -> None:
        address: str = options["address"]
        amount: int = options["amount"]
        chain_id = w3.eth.chain_id
        if chain_id not in devchain.LOCAL_CHAIN_IDS:
            raise CommandError(
                f"The faucet works only on local chains (chain id {LOCAL_CHAINS}); ETH_RPC_URL points at chain "
                f"{chain_id}. Get test tokens from the token's minter there."
            )
        deployment = self._deployment(w3)
        minter = self._deployer(w3)
        token = deployment.token_contract(w3, minter)
        if not token.has_role(token.MINTER_ROLE, minter.address):
            raise CommandError(f"The deployer key {minter.address} lacks MINTER_ROLE on {deployment.token}.")
        token.mint(address, amount)
        wanted: int = options["eth"]
        balance = w3.eth.get_balance(address)
        if balance < wanted:
            minter.send(to=address, value=wanted - balance)
        self.stdout.write(
            f"Minted {tokens_format(amount)} HWC to {address} on chain {chain_id}; it now holds "
            f"{tokens_format(token.balance_of(address))} HWC and {tokens_format(w3.eth.get_balance(address))} ETH."
        )

    def _job(self, raw: str) -> Job:
        try:
            job_id = uuid.UUID(raw)
        except ValueError:
            raise CommandError(f"JOB_ID {raw!r} is not a job id (a UUID).") from None
        job = Job.objects.filter(id=job_id).first()
        if job is None:
            raise CommandError(f"There is no job {job_id}.")
        if job.state != JobState.DRAFT:
            raise CommandError(f"Job {job_id} is {job.state}; only a draft job waits for its funding.")
        return job

    def _fund_dev(self, w3: Web3, options: dict[str, Any]) -> None:
        chain_id = w3.eth.chain_id
        if chain_id not in devchain.LOCAL_CHAIN_IDS:
            raise CommandError(
                f"fund-dev works only on local chains (chain id {LOCAL_CHAINS}); ETH_RPC_URL points at chain "
                f"{chain_id}. There, the poster funds the job from their own wallet."
            )
        job: Job = options["job"]
        deployment = self._deployment(w3)
        poster = Sender(w3, devchain.dev_keys(options["account"] + 1)[options["account"]])
        escrow = deployment.escrow_contract(w3, poster)
        required = funding_required(job=job, fee_bps=escrow.fee_bps())
        try:
            escrow_bind(job_id=job.id, wallet=poster.address)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        key = escrow_key(job.id)
        on_chain = escrow.job_of(key)
        missing = required + options["extra"] - on_chain.remaining
        if missing <= 0:
            self.stdout.write(f"Job {job.id} already holds {tokens_format(on_chain.remaining)} HWC in escrow: enough.")
            return
        token = deployment.token_contract(w3, self._deployer(w3))
        token.mint(poster.address, missing)
        deployment.token_contract(w3, poster).approve(deployment.escrow, missing)
        terms = funding_terms(job)
        receipt = escrow.fund(
            key,
            missing,
            max(escrow_deadline_min(job), on_chain.deadline),
            max_payouts=terms.max_payouts,
            max_payout=terms.max_payout,
        )
        self.stdout.write(
            f"Funded job {job.id} with {tokens_format(missing)} HWC from {poster.address} "
            f"(tx 0x{bytes(receipt['transactionHash']).hex().removeprefix('0x')}); the marketplace starts it when it "
            "sees the deposit."
        )

    def _status(self, w3: Web3, options: dict[str, Any]) -> None:
        chain_id = w3.eth.chain_id
        kind = "local" if chain_id in devchain.LOCAL_CHAIN_IDS else "remote"
        self.stdout.write(f"Chain       {chain_id} ({kind}), block {w3.eth.block_number}")
        deployment = self._deployment(w3)
        token = deployment.token_contract(w3)
        escrow = deployment.escrow_contract(w3)
        self.stdout.write(
            f"Deployment  {settings.CHAIN_DEPLOYMENTS_FILE} (block {deployment.block_number}, "
            f"{deployment.deployed_at})\n"
            f"Token       {token.name()} ({token.symbol()}) {deployment.token}, total supply "
            f"{tokens_format(token.total_supply())}\n"
            f"Escrow      JobEscrow {deployment.escrow}: holds {tokens_format(token.balance_of(escrow.address))} "
            f"{token.symbol()}, fee {escrow.fee_bps()} bps, treasury {escrow.treasury()}, "
            f"{'PAUSED' if escrow.paused() else 'not paused'}"
        )
        accounts = [("admin", deployment.admin), ("operator", deployment.operator), ("treasury", escrow.treasury())]
        accounts += [("address", address) for address in options["addresses"]]
        shown: set[str] = set()
        for label, address in accounts:
            if address in shown:
                continue
            shown.add(address)
            self.stdout.write(
                f"{label:<11} {address}: {tokens_format(w3.eth.get_balance(address))} ETH, "
                f"{tokens_format(token.balance_of(address))} {token.symbol()}, escrow credit "
                f"{tokens_format(escrow.credit_of(address))} {token.symbol()}"
            )

    def _serve(self, port: int | None) -> None:
        if settings.ETH_RPC_URL:
            raise CommandError(f"ETH_RPC_URL is set ({settings.ETH_RPC_URL}): serve runs the project's own Anvil only.")
        stop = False

        def request_stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stop
            stop = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        state_file = _state_file()
        try:
            with devchain.start(port=port, state_file=state_file, log_file=state_file.with_name("anvil.log")) as chain:
                self.stdout.write(
                    f"The project's Anvil runs on {chain.url} (chain id {chain.chain_id}, state in {state_file}).\n"
                    f"  export ETH_RPC_URL={chain.url}\n"
                    "Press Ctrl-C to stop it."
                )
                self.stdout.flush()
                while not stop:
                    try:
                        chain.process.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        continue
                    break
                if not chain.running and not stop:
                    raise CommandError(f"Anvil exited with code {chain.process.returncode}; see {chain.log_file}.")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Stopped the project's Anvil; its state is saved.")
