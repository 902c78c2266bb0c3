"""Gas of JobEscrow's operations, next to a plain ERC-20 transfer measured in the same run (the baseline).

    .venv/bin/python bench/gas.py            # starts its own Anvil (or uses ETH_RPC_URL); prints a Markdown table

Release batches pay 1, 10, 100 and 500 payees, each either new to the escrow (their credit goes from zero to
non-zero) or already credited. Payout indexes run on from batch to batch, as the marketplace numbers them; jobs
are funded with poster-bound ids and terms wide enough for every batch (MAX_PAYOUTS × MAX_PAYOUT). Gas comes from
the receipts; it is deterministic, and each batch figure is the median of --repeats batches.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics

from web3 import Web3
from web3.types import RPCEndpoint, TxReceipt

from contracts import devchain
from contracts.artifacts import load_artifact
from contracts.bindings import JobEscrow, Payout, escrow_job_id
from contracts.connection import connect
from contracts.deploy import deploy
from contracts.sender import Sender

TOKENS = 10**18
AIM_PER_PAYOUT = 7_000
# The benched jobs' terms: more payouts than all batches together, each far above the 1 token paid.
MAX_PAYOUTS = 1_000_000
MAX_PAYOUT = 1_000 * TOKENS
BATCH_SIZES = (1, 10, 100, 500)


class Bench:
    def __init__(self, w3: Web3, repeats: int) -> None:
        self.w3 = w3
        self.repeats = repeats
        admin, operator, poster, node, holder = (Sender(w3, key) for key in devchain.dev_keys(5))
        self.admin, self.operator, self.poster, self.node, self.holder = admin, operator, poster, node, holder
        self.rows: list[tuple[str, int, int | None]] = []
        self.deployment = deploy(w3, admin, admin.address, 250, operator=operator.address)
        self.token = self.deployment.token_contract(w3, admin)
        self.escrow = self.deployment.escrow_contract(w3)
        self.token.mint(poster.address, 10**12 * TOKENS)
        self.token.mint(holder.address, 1_000 * TOKENS)
        self.next_index = 0
        self.job_counter = 0

    def gas(self, receipt: TxReceipt) -> int:
        return int(receipt["gasUsed"])

    def record(self, name: str, gas: int, payouts: int | None = None) -> None:
        self.rows.append((name, gas, payouts))

    def new_job_id(self) -> bytes:
        self.job_counter += 1
        return escrow_job_id(self.poster.address, self.job_counter.to_bytes(12, "big"))

    def deadline(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"]) + 7 * 24 * 3600

    def run(self) -> None:
        escrow_as = self.escrow.connect
        # Deployments, measured on their own.
        token_deploy = self.admin.deploy(load_artifact("ComputeToken"), self.admin.address)
        escrow_deploy = self.admin.deploy(
            load_artifact("JobEscrow"), self.deployment.token, self.admin.address, 250, self.admin.address
        )
        self.record("deploy ComputeToken", self.gas(token_deploy))
        self.record("deploy JobEscrow", self.gas(escrow_deploy))

        # The baseline: a plain ERC-20 transfer, to a holder and to a new address.
        holder_token = self.token.connect(self.holder)
        holder_token.transfer(self.node.address, TOKENS)
        self.record(
            "ERC-20 transfer to a holder (baseline)", self.gas(holder_token.transfer(self.node.address, TOKENS))
        )
        self.record("ERC-20 transfer to a new address", self.gas(holder_token.transfer(_new_address(), TOKENS)))

        # Funding.
        poster_token = self.token.connect(self.poster)
        self.record("approve", self.gas(poster_token.approve(self.escrow.address, 10**12 * TOKENS)))
        job = self.new_job_id()
        poster = escrow_as(self.poster)
        terms = {"max_payouts": MAX_PAYOUTS, "max_payout": MAX_PAYOUT}
        self.record("fund (new job)", self.gas(poster.fund(job, 10**11 * TOKENS, self.deadline(), **terms)))
        self.record("fund (top-up)", self.gas(poster.fund(job, TOKENS, self.deadline(), **terms)))
        permit_job = self.new_job_id()
        permit = self.token.sign_permit(self.poster, self.escrow.address, 10 * TOKENS, self.deadline())
        receipt = poster.fund_with_permit(permit_job, 10 * TOKENS, self.deadline(), permit, **terms)
        self.record("fundWithPermit (new job)", self.gas(receipt))

        # Release: the first batch of the job credits the treasury for the first time; keep it out of the figures.
        operator = escrow_as(self.operator)
        operator.release(job, [Payout(self._index(), self.node.address, TOKENS)])
        for size in BATCH_SIZES:
            new_runs, credited_runs = [], []
            for _ in range(self.repeats):
                payees = [_new_address() for _ in range(size)]
                new_runs.append(self._release(operator, job, payees))
                credited_runs.append(self._release(operator, job, payees))
            self.record(f"release, {size} new payee{'s' * (size > 1)}", int(statistics.median(new_runs)), size)
            self.record(
                f"release, {size} credited payee{'s' * (size > 1)}", int(statistics.median(credited_runs)), size
            )
        # A batch re-sent after success: every index is used, nothing is paid.
        payees = [_new_address() for _ in range(100)]
        indexes = [self._index() for _ in payees]
        operator.release_columns(job, indexes, payees, [TOKENS] * len(payees))
        again = operator.release_columns(job, indexes, payees, [TOKENS] * len(payees))
        assert again.count == 0
        self.record("release, 100 payouts re-sent (all skipped)", self.gas(again.receipt), 100)

        # Withdraw and refund.
        credit = self.escrow.credit_of(self.node.address)
        self.record("withdraw (part of the credit)", self.gas(escrow_as(self.node).withdraw(credit // 2)))
        self.record("withdraw (the rest)", self.gas(escrow_as(self.node).withdraw(credit - credit // 2)))
        self.record("close", self.gas(operator.close(job)))
        self.record("refund", self.gas(escrow_as(self.poster).refund(job)))

    def _index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _release(self, operator: JobEscrow, job: bytes, payees: list[str]) -> int:
        released = operator.release(job, [Payout(self._index(), payee, TOKENS) for payee in payees])
        assert released.count == len(payees)
        return self.gas(released.receipt)

    def table(self) -> str:
        baseline = next(gas for name, gas, _ in self.rows if name.endswith("(baseline)"))
        lines = [
            "| operation | gas | gas per payout | vs. ERC-20 transfer |",
            "|---|---:|---:|---:|",
        ]
        for name, gas, payouts in self.rows:
            per = gas // payouts if payouts else gas
            per_cell = f"{per:,}" if payouts else ""
            lines.append(f"| {name} | {gas:,} | {per_cell} | {per / baseline:.2f}× |")
        return "\n".join(lines)

    def aim(self) -> str:
        gas = next(gas for name, gas, _ in self.rows if name == "release, 100 credited payees")
        per = gas // 100
        verdict = "met" if per <= AIM_PER_PAYOUT else "NOT met"
        return f"Aim ≤ {AIM_PER_PAYOUT:,} gas per payout to a credited payee in a 100-payee batch: {per:,} ({verdict})."


def _new_address() -> str:
    return Web3.to_checksum_address(secrets.token_bytes(20))


def _describe(w3: Web3) -> str:
    client = w3.client_version
    try:
        info = w3.provider.make_request(RPCEndpoint("anvil_nodeInfo"), [])["result"]
        hardfork = f", hardfork {info['hardFork']}"
    except (KeyError, TypeError):
        hardfork = ""
    escrow = load_artifact("JobEscrow")
    return f"{client}{hardfork}; solc {escrow.compiler_version.split('+')[0]}, evmVersion prague, optimizer on"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gas.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="batches measured per size and kind (median)")
    args = parser.parse_args(argv)
    url = os.environ.get("ETH_RPC_URL", "").strip() or None
    with devchain.rpc_url_or_start(url) as rpc_url:
        w3 = connect(rpc_url)
        bench = Bench(w3, args.repeats)
        bench.run()
        print(f"Chain: {_describe(w3)}")
        print()
        print(bench.table())
        print()
        print(bench.aim())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
