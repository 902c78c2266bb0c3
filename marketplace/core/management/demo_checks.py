"""What `manage.py demo` checks before it starts anything: that its var/ directory belongs to the chain it finds."""

from __future__ import annotations

from django.conf import settings

from contracts.connection import connect
from contracts.deploy import load_deployment
from contracts.errors import ChainError
from marketplace.core.localstack import LocalStack, LocalStackError
from marketplace.payments.services.deposits import chain_record_problem


def chain_matches_database(stack: LocalStack) -> None:
    """LocalStackError, saying to run `make clean`, when the chain is not the one the database recorded money on
    (var/chain/ was deleted or reset while the database kept its jobs): checked before anything is deployed or
    read, instead of a reconcile that lists every recorded job as a mismatch at the end."""
    w3 = connect(settings.ETH_RPC_URL)
    try:
        escrow: str | None = load_deployment(stack.deployments_file, w3.eth.chain_id).escrow
    except ChainError:
        escrow = None
    problem = chain_record_problem(w3=w3, escrow_address=escrow)
    if problem is not None:
        where = "the chain at ETH_RPC_URL" if stack.chain is None else f"the chain in {stack.var_dir / 'chain'}"
        raise LocalStackError(
            f"The database in {stack.var_dir} does not belong to {where}: {problem}. The chain's state was reset or "
            "deleted while the database kept its jobs and payments. Run `make clean` to start afresh (it deletes "
            "var/: the database, the chain state and the demo's files), or restore the chain this database knows."
        )
