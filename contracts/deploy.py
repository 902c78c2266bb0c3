"""Deploy ComputeToken and JobEscrow, and record where (the deployments JSON the marketplace reads)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3

from contracts.artifacts import load_artifact
from contracts.bindings import ComputeToken, JobEscrow
from contracts.errors import ChainError, DeploymentNotFound
from contracts.sender import Sender

# The treasury's fee on each payout, in basis points, when a deployment does not choose one (2.5 %).
DEFAULT_FEE_BPS = 250


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain."""

    chain_id: int
    token: ChecksumAddress
    escrow: ChecksumAddress
    admin: ChecksumAddress
    operator: ChecksumAddress
    treasury: ChecksumAddress
    fee_bps: int
    block_number: int
    escrow_source_hash: str
    deployed_at: str

    def token_contract(self, w3: Web3, sender: Sender | None = None) -> ComputeToken:
        return ComputeToken(w3, self.token, sender)

    def escrow_contract(self, w3: Web3, sender: Sender | None = None) -> JobEscrow:
        return JobEscrow(w3, self.escrow, sender)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Deployment:
        return cls(**raw)


def deploy(
    w3: Web3,
    admin: Sender,
    treasury: str,
    fee_bps: int,
    *,
    operator: str | None = None,
    token: str | None = None,
    deployments_file: Path | None = None,
) -> Deployment:
    """Deploy a ComputeToken (unless `token` names an existing one) and a JobEscrow administered by `admin`.

    `admin` gets the admin and pauser roles of both contracts (and the token's minter role); `operator`
    (default: the admin) gets PAYOUT_ROLE. With `deployments_file`, the result is recorded there under its
    chain id.
    """
    if token is None:
        token_receipt = admin.deploy(load_artifact("ComputeToken"), admin.address)
        token_address = token_receipt["contractAddress"]
        if token_address is None:
            raise ChainError("the ComputeToken deployment receipt has no contract address")
    else:
        token_address = Web3.to_checksum_address(token)
    escrow_receipt = admin.deploy(
        load_artifact("JobEscrow"), token_address, Web3.to_checksum_address(treasury), fee_bps, admin.address
    )
    escrow_address = escrow_receipt["contractAddress"]
    if escrow_address is None:
        raise ChainError("the JobEscrow deployment receipt has no contract address")
    operator_address = Web3.to_checksum_address(operator) if operator else admin.address
    JobEscrow(w3, escrow_address, admin).grant_role(JobEscrow.PAYOUT_ROLE, operator_address)
    deployment = Deployment(
        chain_id=admin.chain_id,
        token=token_address,
        escrow=escrow_address,
        admin=admin.address,
        operator=operator_address,
        treasury=Web3.to_checksum_address(treasury),
        fee_bps=fee_bps,
        block_number=escrow_receipt["blockNumber"],
        escrow_source_hash=load_artifact("JobEscrow").source_hash,
        deployed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if deployments_file is not None:
        save_deployment(deployments_file, deployment)
    return deployment


def _read_all(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ChainError(f"{path} is not valid JSON ({exc}); delete it and deploy again") from exc
    if not isinstance(data, dict):
        raise ChainError(f"{path} does not hold a deployments object; delete it and deploy again")
    return data


def save_deployment(path: Path, deployment: Deployment) -> None:
    """Record `deployment` under its chain id in `path` (other chains' entries are kept); atomic replace."""
    entries = _read_all(path)
    entries[str(deployment.chain_id)] = deployment.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        json.dump(entries, tmp, indent=2, sort_keys=True)
        tmp.write("\n")
    # Addresses are public; NamedTemporaryFile creates 0600, which would hide them from other local users.
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def load_deployment(path: Path, chain_id: int) -> Deployment:
    """The deployment recorded for `chain_id` in `path`; DeploymentNotFound if there is none."""
    entry = _read_all(path).get(str(chain_id))
    if entry is None:
        raise DeploymentNotFound(f"no deployment for chain {chain_id} in {path}: run `python manage.py chain deploy`")
    return Deployment.from_json(entry)
