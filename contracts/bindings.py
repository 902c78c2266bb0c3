"""Typed wrappers for ComputeToken and JobEscrow: one class per contract, reads as methods, writes via a Sender."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import EventData, TxReceipt

from contracts.artifacts import load_artifact
from contracts.errors import ChainError
from contracts.sender import Sender, raise_decoded

DEFAULT_ADMIN_ROLE = bytes(32)
JobKey = bytes
# An escrow job id is the poster's address (20 bytes) followed by SALT_BYTES chosen by the marketplace.
SALT_BYTES = 12
# The largest terms the contract stores (uint32 maxPayouts, uint96 maxPayout).
MAX_PAYOUTS_LIMIT = 2**32 - 1
MAX_PAYOUT_LIMIT = 2**96 - 1


def escrow_job_id(poster: str, salt: bytes) -> bytes:
    """The escrow's bytes32 job id of `poster`: the address's 20 bytes, then the 12 bytes of `salt`.

    Only `poster` may fund such an id first (JobEscrow refuses anyone else with EscrowJobIdNotPoster). The
    marketplace passes `job_uuid.bytes[:12]` as the salt.
    """
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a job id's salt is {SALT_BYTES} bytes, not {len(salt)}")
    return bytes.fromhex(Web3.to_checksum_address(poster)[2:]) + bytes(salt)


def poster_of_job_id(job_id: bytes) -> ChecksumAddress:
    """The only address that may fund `job_id` first: its high 20 bytes."""
    return Web3.to_checksum_address(job_key(job_id)[:20])


def _checked_terms(max_payouts: int, max_payout: int) -> tuple[int, int]:
    # Zero is left for the contract to refuse (EscrowZeroTerms); beyond the widths no call could be encoded.
    if not 0 <= max_payouts <= MAX_PAYOUTS_LIMIT:
        raise ValueError(f"max_payouts must be between 1 and {MAX_PAYOUTS_LIMIT} (uint32), not {max_payouts}")
    if not 0 <= max_payout <= MAX_PAYOUT_LIMIT:
        raise ValueError(f"max_payout must be between 1 and 2**96 - 1 base units (uint96), not {max_payout}")
    return max_payouts, max_payout


def job_key(value: JobKey) -> bytes:
    """A raw bytes32 escrow job id, checked for length (build one with escrow_job_id)."""
    if isinstance(value, uuid.UUID):
        raise TypeError("a marketplace UUID is not an escrow job id: use escrow_job_id(poster, job_uuid.bytes[:12])")
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"a job id is 32 bytes, not {type(value).__name__}")
    if len(value) != 32:
        raise ValueError(f"a job id is 32 bytes, not {len(value)} bytes")
    return bytes(value)


class BoundContract:
    """A deployed contract at `address`; writes go through `sender` (see connect())."""

    artifact_name: ClassVar[str]

    def __init__(self, w3: Web3, address: str, sender: Sender | None = None) -> None:
        self.w3 = w3
        self.address: ChecksumAddress = Web3.to_checksum_address(address)
        self.sender = sender
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact(self.artifact_name).abi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address}, sender={self.sender!r})"

    def connect(self, sender: Sender) -> Self:
        """The same contract, with transactions signed by `sender`."""
        return type(self)(self.w3, self.address, sender)

    def has_code(self) -> bool:
        return len(self.w3.eth.get_code(self.address)) > 0

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return self.contract.functions[name](*args).call()
        except ContractLogicError as exc:
            raise_decoded(exc)

    def _send(self, name: str, *args: Any) -> TxReceipt:
        if self.sender is None:
            raise ChainError(f"{type(self).__name__}.{name} sends a transaction: connect(sender) first")
        return self.sender.send(to=self.address, data=self.contract.encode_abi(name, args=list(args)))

    def events(self, receipt: TxReceipt, event_name: str) -> list[EventData]:
        """The `event_name` events this contract emitted in `receipt`."""
        return list(self.contract.events[event_name]().process_receipt(receipt, errors=DISCARD))

    # AccessControl, on both contracts.
    def has_role(self, role: bytes, account: str) -> bool:
        return bool(self._call("hasRole", role, Web3.to_checksum_address(account)))

    def grant_role(self, role: bytes, account: str) -> TxReceipt:
        return self._send("grantRole", role, Web3.to_checksum_address(account))

    def revoke_role(self, role: bytes, account: str) -> TxReceipt:
        return self._send("revokeRole", role, Web3.to_checksum_address(account))


@dataclass(frozen=True)
class Permit:
    """An EIP-2612 permit signature for (owner, spender, value, deadline)."""

    owner: ChecksumAddress
    spender: ChecksumAddress
    value: int
    deadline: int
    v: int
    r: bytes
    s: bytes


class ComputeToken(BoundContract):
    """ERC-20 + EIP-2612 permit, 18 decimals, minted by MINTER_ROLE."""

    artifact_name = "ComputeToken"
    MINTER_ROLE = bytes(Web3.keccak(text="MINTER_ROLE"))

    def name(self) -> str:
        return str(self._call("name"))

    def symbol(self) -> str:
        return str(self._call("symbol"))

    def decimals(self) -> int:
        return int(self._call("decimals"))

    def total_supply(self) -> int:
        return int(self._call("totalSupply"))

    def balance_of(self, account: str) -> int:
        return int(self._call("balanceOf", Web3.to_checksum_address(account)))

    def allowance(self, owner: str, spender: str) -> int:
        return int(self._call("allowance", Web3.to_checksum_address(owner), Web3.to_checksum_address(spender)))

    def nonces(self, owner: str) -> int:
        return int(self._call("nonces", Web3.to_checksum_address(owner)))

    def mint(self, to: str, amount: int) -> TxReceipt:
        return self._send("mint", Web3.to_checksum_address(to), amount)

    def transfer(self, to: str, amount: int) -> TxReceipt:
        return self._send("transfer", Web3.to_checksum_address(to), amount)

    def approve(self, spender: str, amount: int) -> TxReceipt:
        return self._send("approve", Web3.to_checksum_address(spender), amount)

    def sign_permit(
        self, owner: Sender, spender: str, value: int, deadline: int, *, nonce: int | None = None
    ) -> Permit:
        """Sign an EIP-2612 permit with the owner's key (EIP-712 typed data; the domain is read from the token)."""
        _fields, name, version, chain_id, verifying_contract, _salt, _ext = self._call("eip712Domain")
        spender_address = Web3.to_checksum_address(spender)
        message = {
            "owner": owner.address,
            "spender": spender_address,
            "value": value,
            "nonce": self.nonces(owner.address) if nonce is None else nonce,
            "deadline": deadline,
        }
        signed = owner.account.sign_typed_data(
            domain_data={
                "name": name,
                "version": version,
                "chainId": chain_id,
                "verifyingContract": verifying_contract,
            },
            message_types={
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ]
            },
            message_data=message,
        )
        return Permit(
            owner=owner.address,
            spender=spender_address,
            value=value,
            deadline=deadline,
            v=signed.v,
            r=signed.r.to_bytes(32, "big"),
            s=signed.s.to_bytes(32, "big"),
        )


@dataclass(frozen=True)
class Job:
    """A job's escrow account, as jobOf() returns it."""

    poster: ChecksumAddress
    funded: int
    released: int
    remaining: int
    deadline: int
    closed: bool
    max_payouts: int
    max_payout: int

    @property
    def exists(self) -> bool:
        return int(self.poster, 16) != 0


@dataclass(frozen=True)
class Payout:
    """One payout of a job: its per-job index (0, 1, 2, …), who is paid, and how much (base units)."""

    index: int
    payee: str
    amount: int


@dataclass(frozen=True)
class Released:
    """What a release() actually paid (indexes used before are skipped)."""

    count: int
    amount: int
    fee: int
    receipt: TxReceipt


class JobEscrow(BoundContract):
    """Per-job escrow: fund, release payouts, close, refund, withdraw credit."""

    artifact_name = "JobEscrow"
    PAYOUT_ROLE = bytes(Web3.keccak(text="PAYOUT_ROLE"))
    PAUSER_ROLE = bytes(Web3.keccak(text="PAUSER_ROLE"))
    MAX_FEE_BPS = 1_000

    # Posters.
    def fund(self, job_id: JobKey, amount: int, deadline: int, *, max_payouts: int, max_payout: int) -> TxReceipt:
        """Lock `amount` for the job; the first fund fixes its terms, a top-up must repeat them."""
        return self._send("fund", job_key(job_id), amount, deadline, *_checked_terms(max_payouts, max_payout))

    def fund_with_permit(
        self, job_id: JobKey, amount: int, deadline: int, permit: Permit, *, max_payouts: int, max_payout: int
    ) -> TxReceipt:
        """fund() with an EIP-2612 permit for `amount` instead of an approve."""
        return self._send(
            "fundWithPermit",
            job_key(job_id),
            amount,
            deadline,
            *_checked_terms(max_payouts, max_payout),
            permit.deadline,
            permit.v,
            permit.r,
            permit.s,
        )

    def refund(self, job_id: JobKey) -> TxReceipt:
        return self._send("refund", job_key(job_id))

    # Nodes (and the treasury).
    def withdraw(self, amount: int) -> TxReceipt:
        return self._send("withdraw", amount)

    # The marketplace (PAYOUT_ROLE).
    def release(self, job_id: JobKey, payouts: Sequence[Payout]) -> Released:
        """Pay a batch of payouts; indexes used before are skipped (re-sending a batch is harmless)."""
        return self.release_columns(
            job_id, [p.index for p in payouts], [p.payee for p in payouts], [p.amount for p in payouts]
        )

    def release_columns(
        self, job_id: JobKey, payout_indexes: Sequence[int], payees: Sequence[str], amounts: Sequence[int]
    ) -> Released:
        """release() with the three lists as the contract takes them."""
        receipt = self._send(
            "release",
            job_key(job_id),
            list(payout_indexes),
            [Web3.to_checksum_address(p) for p in payees],
            list(amounts),
        )
        (event,) = self.events(receipt, "PayoutsReleased")
        return Released(
            count=event["args"]["count"], amount=event["args"]["amount"], fee=event["args"]["fee"], receipt=receipt
        )

    def close(self, job_id: JobKey) -> TxReceipt:
        return self._send("close", job_key(job_id))

    # Admin and pauser.
    def pause(self) -> TxReceipt:
        return self._send("pause")

    def unpause(self) -> TxReceipt:
        return self._send("unpause")

    def set_fee_bps(self, fee_bps: int) -> TxReceipt:
        return self._send("setFeeBps", fee_bps)

    def set_treasury(self, treasury: str) -> TxReceipt:
        return self._send("setTreasury", Web3.to_checksum_address(treasury))

    # Views.
    def job_of(self, job_id: JobKey) -> Job:
        poster, funded, released, remaining, deadline, closed, max_payouts, max_payout = self._call(
            "jobOf", job_key(job_id)
        )
        return Job(
            Web3.to_checksum_address(poster), funded, released, remaining, deadline, closed, max_payouts, max_payout
        )

    def credit_of(self, account: str) -> int:
        return int(self._call("creditOf", Web3.to_checksum_address(account)))

    def payout_used(self, job_id: JobKey, index: int) -> bool:
        return bool(self._call("payoutUsed", job_key(job_id), index))

    def fee_bps(self) -> int:
        return int(self._call("feeBps"))

    def treasury(self) -> ChecksumAddress:
        return Web3.to_checksum_address(self._call("treasury"))

    def token_address(self) -> ChecksumAddress:
        return Web3.to_checksum_address(self._call("token"))

    def paused(self) -> bool:
        return bool(self._call("paused"))
