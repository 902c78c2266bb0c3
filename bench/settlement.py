"""Settlement throughput and gas: payouts settled per second through the marketplace path (payout rows →
numbering → release() batches → receipts recorded → ledger) against direct release() calls of the same batches
on the same Anvil in the same run (the baseline), plus gas per payout from the receipts.

    .venv/bin/python bench/settlement.py [--payouts 600] [--payees 60] [--repeats 3]

Runs on a throwaway SQLite database and its own Anvil; needs nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(var_dir: Path) -> None:
    for name in ("DATABASE_URL", "ETH_RPC_URL"):
        os.environ.pop(name, None)
    os.environ["HASHWORK_VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _payout_rows(job_price: int, payouts: int, payees: list[str]) -> Any:
    """A running job with `payouts` accepted assignments spread over `payees` nodes, each with its payout."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task
    from marketplace.nodes.models import Node
    from marketplace.payments.models import Payout

    user = get_user_model().objects.create(username=f"bench-{uuid.uuid4().hex[:8]}")
    job = Job.objects.create(
        poster=user, kind="benchmark", spec={}, price_per_replica=job_price, replication=1, task_count=payouts,
        quote=job_price * payouts, deadline=timezone.now() + timedelta(days=1), state=JobState.COMPLETED,
    )  # fmt: skip
    nodes = Node.objects.bulk_create(
        Node(operator=user, name=f"n{i}", wallet_address=p.lower(), token_hash=uuid.uuid4().hex)
        for i, p in enumerate(payees)
    )
    tasks = Task.objects.bulk_create(Task(job=job, index=i, payload={}) for i in range(payouts))
    now = timezone.now()
    assignments = Assignment.objects.bulk_create(
        Assignment(task=t, node=nodes[i % len(nodes)], state=AssignmentState.ACCEPTED, start_by=now,
                   lease_expires_at=now)
        for i, t in enumerate(tasks)
    )  # fmt: skip
    Payout.objects.bulk_create(
        Payout(assignment=a, job=job, node=a.node, payee=payees[i % len(payees)], amount=job_price, fee=0)
        for i, a in enumerate(assignments)
    )
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payouts", type=int, default=600, help="payouts per run")
    parser.add_argument("--payees", type=int, default=60, help="distinct node wallets they go to")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path; medians are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hw-settle-") as tmp:
        _setup(Path(tmp))
        logging.getLogger("marketplace").setLevel(logging.WARNING)
        from django.conf import settings
        from eth_account import Account

        from contracts import devchain
        from contracts.bindings import ComputeToken, JobEscrow, escrow_job_id
        from contracts.bindings import Payout as ChainPayout
        from contracts.connection import connect
        from contracts.deploy import deploy
        from contracts.sender import Sender
        from marketplace.payments import chain, services
        from marketplace.payments.models import Payout

        price = 10**18
        payees = [Account.create().address for _ in range(args.payees)]
        market_rates: list[float] = []
        direct_rates: list[float] = []
        market_gas: list[float] = []
        direct_gas: list[float] = []
        with devchain.start() as anvil:
            w3 = connect(anvil.url)
            keys = devchain.dev_keys()
            admin = Sender(w3, keys[0])
            settings.ETH_RPC_URL = anvil.url
            dep = deploy(w3, admin, Sender(w3, keys[-1]).address, 250, deployments_file=settings.CHAIN_DEPLOYMENTS_FILE)
            poster = Sender(w3, keys[1])
            token = ComputeToken(w3, dep.token, admin)
            escrow_poster = JobEscrow(w3, dep.escrow, poster)
            deadline = w3.eth.get_block("latest")["timestamp"] + 86400
            per_job = args.payouts * (price + services.fee_of(price, 250))

            def funded_job_key(key: bytes) -> None:
                token.mint(poster.address, per_job)
                ComputeToken(w3, dep.token, poster).approve(dep.escrow, per_job)
                escrow_poster.fund(key, per_job, deadline, max_payouts=args.payouts, max_payout=price)

            operator = chain.escrow(w3, signed=True)
            market_jobs = []
            for _ in range(args.repeats):
                job = _payout_rows(price, args.payouts, payees)
                market_jobs.append(job.id)
                services.escrow_bind(job_id=job.id, wallet=poster.address)
                funded_job_key(services.escrow_key(job.id))
                started = time.perf_counter()
                report = services.payouts_settle(w3=w3, escrow=operator, from_block=dep.block_number)
                market_rates.append(report.settled / (time.perf_counter() - started))
                gas = sum(w3.eth.get_transaction_receipt(tx)["gasUsed"] for tx in report.transactions)
                market_gas.append(gas / report.settled)
                assert Payout.objects.filter(job=job, state="settled").count() == args.payouts

                key = escrow_job_id(poster.address, uuid.uuid4().bytes[:12])
                funded_job_key(key)
                batches = [range(i, min(i + services.MAX_BATCH, args.payouts))
                           for i in range(0, args.payouts, services.MAX_BATCH)]  # fmt: skip
                started = time.perf_counter()
                total_gas = 0
                for batch in batches:
                    released = operator.release(key, [ChainPayout(i, payees[i % len(payees)], price) for i in batch])
                    total_gas += released.receipt["gasUsed"]
                direct_rates.append(args.payouts / (time.perf_counter() - started))
                direct_gas.append(total_gas / args.payouts)
            # The marketplace's own jobs must reconcile (payee credits also hold the baseline's direct releases).
            services.chain_sync(w3=w3, escrow=operator, chain_id=dep.chain_id, start_block=dep.block_number)
            mismatches = [
                m for job_id in market_jobs for m in services.reconcile(w3=w3, escrow=operator, job_id=job_id)
            ]
    market, direct = statistics.median(market_rates), statistics.median(direct_rates)
    print(f"{args.payouts} payouts to {args.payees} payees per run, batches of {services.MAX_BATCH}; "
          f"medians of {args.repeats}; Anvil 1.7.1 on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'path':<52}{'payouts/s':>11}{'gas/payout':>12}{'vs direct':>11}")
    print(f"{'direct release() calls (baseline)':<52}{direct:>11.1f}{statistics.median(direct_gas):>12.0f}{1:>11.3f}")
    print(f"{'marketplace settlement (rows → release → ledger)':<52}{market:>11.1f}"
          f"{statistics.median(market_gas):>12.0f}{market / direct:>11.3f}")  # fmt: skip
    print(f"runs: marketplace {[round(x, 1) for x in market_rates]}, direct {[round(x, 1) for x in direct_rates]}")
    print(f"reconcile of the marketplace's jobs after the runs: {mismatches or 'clean'}")


if __name__ == "__main__":
    main()
