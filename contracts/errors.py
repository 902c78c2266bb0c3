"""Every error of the contracts package under one root, ChainError; reverts decoded by custom-error name.

A revert of ComputeToken or JobEscrow becomes an instance of the class named like the Solidity error
(`EscrowUnknownJob`, `AccessControlUnauthorizedAccount`, …), with the error's arguments in `fields`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from web3 import Web3

_BUILD_DIR = Path(__file__).resolve().parent / "build"


class ChainError(Exception):
    """The root of every error raised by the contracts package."""


class ContractRevert(ChainError):
    """A call or transaction reverted; subclasses are named after the Solidity custom error."""

    # Abstract groupings (EscrowError, TokenError, …) set this so they are not mistaken for an error name.
    grouping: ClassVar[bool] = True
    registry: ClassVar[dict[str, type[ContractRevert]]] = {}

    def __init__(self, error_name: str, fields: dict[str, Any] | None = None, data: bytes = b"") -> None:
        self.error_name = error_name
        self.fields = fields or {}
        self.data = data
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.fields.items())
        super().__init__(f"{error_name}({shown})")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "grouping" not in cls.__dict__:
            cls.grouping = False
            ContractRevert.registry[cls.__name__] = cls


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


# Groupings, to catch a family at once.
class EscrowError(ContractRevert):
    """A JobEscrow rule refused the call."""

    grouping = True


class TokenError(ContractRevert):
    """The token refused the call (balance, allowance, permit signature)."""

    grouping = True


class AccessError(ContractRevert):
    """The caller lacks a role, or the contract's pause state forbids the call."""

    grouping = True


# JobEscrow.
class EscrowUnknownJob(EscrowError):
    """No job was ever funded under this id."""


class EscrowJobClosed(EscrowError):
    """The job is closed: no payouts or top-ups any more."""


class EscrowNotPoster(EscrowError):
    """Only the job's poster may do this."""


class EscrowJobIdNotPoster(EscrowError):
    """A job id's first fund must come from the address in its high 20 bytes (see escrow_job_id)."""


class EscrowZeroTerms(EscrowError):
    """A job's terms (maxPayouts, maxPayout) must both be above zero."""


class EscrowTermsMismatch(EscrowError):
    """A top-up must repeat the terms the job was first funded with."""


class EscrowPayoutIndexOutOfRange(EscrowError):
    """A payout index is not below the job's maxPayouts."""


class EscrowPayoutTooLarge(EscrowError):
    """A payout's amount is above the job's maxPayout."""


class EscrowZeroAmount(EscrowError):
    """An amount of zero was given."""


class EscrowZeroAddress(EscrowError):
    """The zero address was given for a token, treasury or admin."""


class EscrowDeadlineInPast(EscrowError):
    """A funding deadline must lie in the future."""


class EscrowDeadlineMovedEarlier(EscrowError):
    """A top-up may only move the deadline later."""


class EscrowLengthMismatch(EscrowError):
    """release() got lists of different lengths."""


class EscrowZeroPayee(EscrowError):
    """A payout names the zero address as payee."""


class EscrowInsufficientJobBalance(EscrowError):
    """The job's remaining balance does not cover the batch (payouts plus fee)."""


class EscrowRefundTooEarly(EscrowError):
    """Refund is possible once the deadline has passed or the job is closed."""


class EscrowNothingToRefund(EscrowError):
    """The job's remaining balance is zero."""


class EscrowInsufficientCredit(EscrowError):
    """A withdrawal asked for more than the account's credit."""


class EscrowFeeTooHigh(EscrowError):
    """The fee is above the cap of 1000 basis points."""


# Roles and pause (OpenZeppelin AccessControl, Pausable).
class AccessControlUnauthorizedAccount(AccessError):
    """The caller lacks the role the function needs."""


class AccessControlBadConfirmation(AccessError):
    """renounceRole() must be called by the account renouncing."""


class EnforcedPause(AccessError):
    """The contract is paused."""


class ExpectedPause(AccessError):
    """The contract is not paused."""


# ComputeToken (OpenZeppelin ERC20, ERC20Permit, ECDSA, Nonces).
class ERC20InsufficientBalance(TokenError):
    """The sender's token balance is too low."""


class ERC20InsufficientAllowance(TokenError):
    """The spender's allowance is too low (approve or permit first)."""


class ERC20InvalidSender(TokenError):
    """Transfer from the zero address."""


class ERC20InvalidReceiver(TokenError):
    """Transfer or mint to the zero address."""


class ERC20InvalidApprover(TokenError):
    """Approval from the zero address."""


class ERC20InvalidSpender(TokenError):
    """Approval for the zero address."""


class ERC2612ExpiredSignature(TokenError):
    """The permit's deadline has passed."""


class ERC2612InvalidSigner(TokenError):
    """The permit was not signed by the owner (wrong key, domain, nonce or values)."""


class InvalidAccountNonce(TokenError):
    """The permit nonce is not the owner's current nonce."""


class ECDSAInvalidSignature(TokenError):
    """The signature does not recover to an address."""


class ECDSAInvalidSignatureLength(TokenError):
    """The signature has the wrong length."""


class ECDSAInvalidSignatureS(TokenError):
    """The signature's s value is in the upper half of the curve order (malleable)."""


# OpenZeppelin utilities.
class ReentrancyGuardReentrantCall(ContractRevert):
    """A nonReentrant function was entered again during its own call."""


class SafeERC20FailedOperation(ContractRevert):
    """The token's transfer returned false or no data where it must return true."""


class SafeCastOverflowedUintDowncast(ContractRevert):
    """A job's funded total would not fit the escrow's 128-bit bookkeeping."""


class InvalidShortString(ContractRevert):
    """OpenZeppelin ShortStrings: a string too long for a short string."""


class StringTooLong(ContractRevert):
    """OpenZeppelin ShortStrings: a string too long to store."""


# Reverts that are not custom errors.
class RevertedWithReason(ContractRevert):
    """A require(…, "reason") style revert: Error(string)."""


class Panic(ContractRevert):
    """A Solidity panic (overflow, division by zero, assert): Panic(uint256)."""


class UnknownRevert(ContractRevert):
    """Revert data that matches no error in our ABIs (or no data at all)."""


# Not reverts.
class TransactionFailed(ChainError):
    """A transaction was mined with status 0 and replaying it gave no reason."""


class TransactionTimeout(ChainError):
    """A transaction was sent but no receipt arrived in time."""


class InvalidKey(ChainError):
    """A private key is malformed (it must be 0x followed by 64 hex digits)."""


class DeploymentNotFound(ChainError):
    """No deployment is recorded for this chain, or its contracts have no code there."""


class DevChainError(ChainError):
    """The local Anvil could not be started or stopped."""


@dataclass(frozen=True)
class _ErrorAbi:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


def _canonical_type(param: dict[str, Any]) -> str:
    kind: str = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


@functools.cache
def _selectors() -> dict[bytes, _ErrorAbi]:
    found: dict[bytes, _ErrorAbi] = {
        bytes.fromhex("08c379a0"): _ErrorAbi("Error", ("reason",), ("string",)),
        bytes.fromhex("4e487b71"): _ErrorAbi("Panic", ("code",), ("uint256",)),
    }
    for path in sorted(_BUILD_DIR.glob("*.json")):
        for item in json.loads(path.read_text())["abi"]:
            if item["type"] != "error":
                continue
            types = tuple(_canonical_type(p) for p in item["inputs"])
            selector = bytes(Web3.keccak(text=f"{item['name']}({','.join(types)})")[:4])
            found[selector] = _ErrorAbi(item["name"], tuple(p["name"] for p in item["inputs"]), types)
    return found


def abi_error_names() -> set[str]:
    """The names of every custom error in the committed ABIs."""
    return {e.name for e in _selectors().values()} - {"Error", "Panic"}


def decode_revert(data: bytes | str | None) -> ContractRevert:
    """Turn revert data into the exception named after its error (UnknownRevert if no ABI knows it)."""
    raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else (data or b"")
    error = _selectors().get(raw[:4])
    if error is None:
        return UnknownRevert("UnknownRevert", {"data": raw}, raw)
    try:
        values = decode(list(error.types), raw[4:])
    except DecodingError:
        return UnknownRevert(error.name, {"data": raw}, raw)
    fields = {
        name: Web3.to_checksum_address(value) if kind == "address" else value
        for name, kind, value in zip(error.names, error.types, values, strict=True)
    }
    if error.name == "Error":
        return RevertedWithReason("Error", fields, raw)
    if error.name == "Panic":
        return Panic("Panic", fields, raw)
    cls = ContractRevert.registry.get(error.name, UnknownRevert)
    return cls(error.name, fields, raw)
