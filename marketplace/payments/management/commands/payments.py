"""`python manage.py payments reconcile [--job ID]`: compare the ledger with the chain."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from contracts.errors import ChainError
from marketplace.payments import chain, services


class Command(BaseCommand):
    help = (
        "Payments tools. reconcile [--job ID]: compare the ledger with the chain (per job: funded, released, "
        "remaining; per payee: credit) and print every mismatch, and every job whose last release or close the "
        "escrow refused (with its reason and next try); exit code 1 if there is either."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        reconcile = sub.add_parser("reconcile", help="compare the ledger with the chain")
        reconcile.add_argument("--job", help="only this job (its id)")

    def handle(self, *args: Any, action: str, job: str | None = None, **options: Any) -> None:
        job_id = None
        if job is not None:
            try:
                job_id = uuid.UUID(job)
            except ValueError:
                raise CommandError(f"--job {job!r} is not a job id (a UUID).") from None
        try:
            w3 = chain.web3()
            dep = chain.deployment(w3)
            mismatches = services.reconcile(w3=w3, escrow=chain.escrow(w3), job_id=job_id, from_block=dep.block_number)
        except (chain.ChainNotConfigured, chain.ChainUnavailable, ChainError) as exc:
            raise CommandError(str(exc)) from None
        for mismatch in mismatches:
            self.stdout.write(f"MISMATCH {mismatch}")
        refused = [s for s in services.settlement_problems() if job_id is None or s.job_id == job_id]
        for settlement in refused:
            when = settlement.retry_at.isoformat(timespec="seconds") if settlement.retry_at else "the next run"
            self.stdout.write(
                f"REFUSED job {settlement.job_id}: {settlement.refused_step} refused {settlement.refusals} time(s) "
                f"in a row: {settlement.last_error}; next try at {when}"
            )
        if mismatches or refused:
            raise SystemExit(1)
        scope = f"job {job_id}" if job_id else "every job and payee"
        self.stdout.write(f"The ledger matches the chain for {scope} (chain {dep.chain_id}, escrow {dep.escrow}).")
