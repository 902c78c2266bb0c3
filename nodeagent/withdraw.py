"""Withdraw a node's credit from the escrow to its wallet, signed with the node's own key (which never leaves the
node). Used by `nodeagent withdraw` and by the daemon when its operator asks from the dashboard."""

from __future__ import annotations

from contracts.units import tokens_format
from nodeagent.client import ApiError, MarketplaceClient
from nodeagent.config import AgentConfig
from nodeagent.retry import TransientError


class WithdrawError(Exception):
    """Why nothing was withdrawn, in words for the operator."""


def withdraw(cfg: AgentConfig, amount: int | None = None, rpc_url: str | None = None) -> str:
    """Withdraw `amount` base units (all the credit when None); returns what happened, with the transaction."""
    from contracts.bindings import JobEscrow
    from contracts.connection import connect
    from contracts.errors import ChainError
    from contracts.sender import Sender

    try:
        info = MarketplaceClient(cfg.marketplace_url, token=cfg.token).chain()
    except (ApiError, TransientError) as exc:
        raise WithdrawError(f"Cannot ask {cfg.marketplace_url} where the escrow is: {exc}") from exc
    if not info.get("configured"):
        raise WithdrawError("The marketplace runs without a chain: there is nothing to withdraw.")
    rpc_url = rpc_url or info.get("rpc_url")
    if not rpc_url:
        raise WithdrawError(
            "The marketplace does not publish its chain's RPC URL: pass --rpc-url with a JSON-RPC URL for chain "
            f"{info.get('chain_id')} (your own node or provider)."
        )
    try:
        w3 = connect(rpc_url)
        escrow = JobEscrow(w3, info["escrow"], Sender(w3, cfg.wallet_key))
        credit = escrow.credit_of(cfg.wallet_address)
        if credit == 0:
            raise WithdrawError(f"{cfg.wallet_address} has no credit in the escrow yet: nothing to withdraw.")
        wanted = credit if amount is None else amount
        if wanted > credit:
            raise WithdrawError(
                f"You asked for {tokens_format(wanted)} HWC but the credit is {tokens_format(credit)} HWC."
            )
        if w3.eth.get_balance(w3.to_checksum_address(cfg.wallet_address)) == 0:
            raise WithdrawError(
                f"{cfg.wallet_address} has no ETH to pay gas on chain {info['chain_id']}: send it a little."
            )
        receipt = escrow.withdraw(wanted)
    except ChainError as exc:
        raise WithdrawError(f"The withdrawal failed: {exc}") from exc
    tx = "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x")
    return f"Withdrew {tokens_format(wanted)} HWC to {cfg.wallet_address} (tx {tx})."
