"""Deploy the escrow contracts unless the chain already holds the deployment recorded for it (compose `deploy`).

`docker compose up` runs this every time. The first run deploys with `manage.py chain deploy` (any arguments given
here are passed on, e.g. `--treasury 0x… --operator 0x…`); later runs find the recorded contracts on the chain and
change nothing, so a restart never swaps the escrow that holds posters' funds for an empty one. A local chain that
was reset (no code at the recorded addresses) is deployed to again; on any other chain that is an error to look at.
"""

from __future__ import annotations

import os
import sys

import django


def main(argv: list[str]) -> int:
    """Deploy if needed; 0 when the contracts are there afterwards."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from contracts import devchain
    from contracts.connection import connect
    from contracts.deploy import Deployment, load_deployment
    from contracts.errors import ChainError, DeploymentNotFound

    if not settings.ETH_RPC_URL:
        print("deploy: ETH_RPC_URL is not set; point it at the chain to deploy to.", file=sys.stderr)
        return 2
    try:
        w3 = connect(settings.ETH_RPC_URL)
        chain_id = w3.eth.chain_id
    except ChainError as exc:
        print(f"deploy: cannot reach the chain at {settings.ETH_RPC_URL}: {exc}", file=sys.stderr)
        return 1
    recorded: Deployment | None
    try:
        recorded = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, chain_id)
    except DeploymentNotFound:
        recorded = None
    if recorded is not None:
        contracts = (("ComputeToken", recorded.token), ("JobEscrow", recorded.escrow))
        missing = [name for name, address in contracts if not w3.eth.get_code(address)]
        if not missing:
            print(
                f"Contracts already deployed on chain {chain_id} (JobEscrow {recorded.escrow}, ComputeToken "
                f"{recorded.token}); nothing to do."
            )
            return 0
        if chain_id not in devchain.LOCAL_CHAIN_IDS:
            print(
                f"deploy: {settings.CHAIN_DEPLOYMENTS_FILE} records {' and '.join(missing)} on chain {chain_id}, but "
                "there is no code there. Check ETH_RPC_URL; nothing was deployed over the recorded deployment.",
                file=sys.stderr,
            )
            return 1
        print(f"Local chain {chain_id} was reset (no code at the recorded addresses): deploying again.")
    try:
        call_command("chain", "deploy", *argv)
    except CommandError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
