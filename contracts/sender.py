"""Sign and send the transactions of one key: the sender owns the key's nonce, decodes reverts, awaits receipts, and
re-prices a transaction that is not mined (EIP-1559 replacement: the same nonce with higher fees)."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, NoReturn, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from contracts.artifacts import Artifact
from contracts.errors import ContractRevert, InvalidKey, TransactionFailed, TransactionTimeout, decode_revert

logger = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
DEFAULT_RECEIPT_TIMEOUT = 120.0
# A transaction with no receipt this long after it was sent is re-sent with its fees raised by BUMP (9/8: +12.5 %;
# geth and Anvil replace a pending transaction only for at least +10 % on both fees), at most DEFAULT_MAX_BUMPS times.
DEFAULT_BUMP_AFTER = 60.0
DEFAULT_MAX_BUMPS = 4
BUMP = (9, 8)
# Receipts are polled this often at first, then less often (up to the maximum) while the transaction waits.
_POLL_FIRST, _POLL_MAX = 0.05, 1.0
# What a node answers to a replacement when a version of the transaction was mined already, or it has this one.
_SETTLED_ANSWERS = ("nonce too low", "already known", "known transaction", "already imported")


def parse_private_key(raw: str, *, name: str = "private key") -> str:
    """Validate a hex private key and return it 0x-prefixed; InvalidKey names `name` (say, the variable)."""
    value = raw.strip()
    if not _KEY_RE.match(value):
        raise InvalidKey(f"{name} must be 0x followed by 64 hex digits (a secp256k1 private key)")
    value = "0x" + value.removeprefix("0x")
    if int(value, 16) == 0:
        raise InvalidKey(f"{name} is zero, which is not a valid private key")
    return value


def revert_data(exc: ContractLogicError) -> str | None:
    """The revert data of a web3 revert: Anvil answers it as a hex string, Hardhat Network as
    `{"message": …, "data": "0x…"}`."""
    data: object = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    return data if isinstance(data, str) else None


def raise_decoded(exc: ContractLogicError) -> NoReturn:
    """Re-raise a web3 revert as the contracts package's exception named after the Solidity error."""
    raise decode_revert(revert_data(exc)) from exc


class Sender:
    """The only sender of one key's transactions.

    It holds the key's next nonce in memory (read once from the chain), so transactions from several threads
    never race on it; keep one Sender per key per process. After rewinding a chain (evm_revert), call
    forget_nonce().

    A transaction still without a receipt `bump_after` seconds after it (or its last replacement) was sent is
    re-sent with the same nonce and both fees raised by 12.5 % (and at least to what the latest block asks), at
    most `max_bumps` times and never above `max_fee_per_gas` (if set); whichever version is mined is the receipt.
    TransactionTimeout once `receipt_timeout` seconds pass after the last version sent without a receipt.
    """

    def __init__(
        self,
        w3: Web3,
        key: str | bytes,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
        bump_after: float = DEFAULT_BUMP_AFTER,
        max_bumps: int = DEFAULT_MAX_BUMPS,
        max_fee_per_gas: int | None = None,
    ) -> None:
        if isinstance(key, str):
            key = parse_private_key(key)
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(key)
        self.address: ChecksumAddress = self.account.address
        self.receipt_timeout = receipt_timeout
        self.bump_after = bump_after
        self.max_bumps = max_bumps
        self.max_fee_per_gas = max_fee_per_gas
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

    def __repr__(self) -> str:
        return f"Sender({self.address})"

    def forget_nonce(self) -> None:
        """Read the nonce from the chain again before the next transaction."""
        with self._lock:
            self._nonce = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    def estimate(self, tx: TxParams) -> int:
        """Gas for `tx`; a revert is raised as its decoded error."""
        try:
            return self.w3.eth.estimate_gas(tx)
        except ContractLogicError as exc:
            raise_decoded(exc)

    def send(self, *, to: ChecksumAddress | None, data: HexStr | bytes = b"", value: int = 0) -> TxReceipt:
        """Sign and send one transaction, wait for its receipt; a revert raises its decoded error."""
        tx: TxParams = {"from": self.address, "value": Wei(value), "data": HexBytes(data), "chainId": self.chain_id}
        if to is not None:
            tx["to"] = to
        # One transaction of this key is built and broadcast at a time: on a chain that mines on every send and
        # prunes history (Anvil --prune-history), an estimate racing another thread's send can be asked of a
        # block that is already gone (BlockOutOfRangeError). Receipts are still awaited concurrently.
        with self._build_lock:
            # Headroom over the estimate: state may change between estimating and mining (other senders).
            tx["gas"] = self.estimate(tx) * 6 // 5 + 10_000
            priority = self.w3.eth.max_priority_fee
            base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas", 0)
            max_fee = 2 * base_fee + priority
            if self.max_fee_per_gas is not None:
                max_fee = min(max_fee, self.max_fee_per_gas)
            tx["maxPriorityFeePerGas"] = Wei(min(priority, max_fee))
            tx["maxFeePerGas"] = Wei(max_fee)
            tx_hash = self._sign_and_send(tx)
        receipt = self._await_receipt(tx, tx_hash)
        if receipt["status"] != 1:
            self._explain_failure(tx, receipt)
        return receipt

    def deploy(self, artifact: Artifact, *args: Any) -> TxReceipt:
        """Deploy `artifact` with constructor `args`; the receipt's contractAddress is the new contract."""
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=HexStr(artifact.bytecode))
        data = factory.constructor(*args).data_in_transaction
        return self.send(to=None, data=data)

    def _await_receipt(self, tx: TxParams, first: HexBytes) -> TxReceipt:
        """The receipt of whichever version of `tx` is mined: the first one sent, or a re-priced replacement."""
        sent = [first]
        last_sent = time.monotonic()
        bumps = 0
        poll = _POLL_FIRST
        while True:
            for tx_hash in sent:
                try:
                    return self.w3.eth.get_transaction_receipt(tx_hash)
                except TransactionNotFound:
                    continue
            waited = time.monotonic() - last_sent
            if bumps < self.max_bumps and waited >= self.bump_after:
                bumps += 1
                replacement = self._bump(tx, sent, attempt=bumps)
                if replacement is None:
                    bumps = self.max_bumps  # nothing more to send: wait for the versions sent
                    continue
                sent.append(replacement)
                last_sent = time.monotonic()
                poll = _POLL_FIRST
                continue
            if waited >= self.receipt_timeout:
                hashes = ", ".join(f"0x{h.hex()}" for h in sent)
                raise TransactionTimeout(
                    f"transaction {hashes} from {self.address} (nonce {tx['nonce']}, {len(sent) - 1} fee bumps) has "
                    f"no receipt {self.receipt_timeout}s after it was last sent"
                )
            time.sleep(poll)
            poll = min(poll * 1.5, _POLL_MAX)

    def _bump(self, tx: TxParams, sent: list[HexBytes], *, attempt: int) -> HexBytes | None:
        """Re-sign `tx` (same nonce) with both fees raised by BUMP and at least what the latest block asks, and
        broadcast it; `tx` then holds the new fees. None when no replacement can be sent (no more are tried): the
        fee cap leaves no room for one, the node answers that a version was mined already, or it refuses it."""
        up, down = BUMP
        tip = -(-int(tx["maxPriorityFeePerGas"]) * up // down)
        max_fee = -(-int(tx["maxFeePerGas"]) * up // down)
        with self._build_lock:
            base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
            max_fee = max(max_fee, 2 * base_fee + tip)
            if self.max_fee_per_gas is not None and max_fee > self.max_fee_per_gas:
                if self.max_fee_per_gas * down < int(tx["maxFeePerGas"]) * up:
                    logger.warning(
                        "transaction 0x%s from %s is not re-priced: max fee %d is at the cap %d",
                        sent[-1].hex(), self.address, tx["maxFeePerGas"], self.max_fee_per_gas,
                    )  # fmt: skip
                    return None
                max_fee = self.max_fee_per_gas
            bumped: TxParams = {**tx, "maxPriorityFeePerGas": Wei(min(tip, max_fee)), "maxFeePerGas": Wei(max_fee)}
            signed = self.account.sign_transaction(cast(dict[str, Any], bumped))
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Web3RPCError as exc:
                if any(answer in str(exc).lower() for answer in _SETTLED_ANSWERS):
                    return None  # a version sent before is mined (its receipt follows) or is the node's already
                # A node with a stricter replacement rule, say: the versions already sent are still pending.
                logger.warning("fee bump %d of 0x%s from %s refused: %s", attempt, sent[-1].hex(), self.address, exc)
                return None
        tx["maxPriorityFeePerGas"], tx["maxFeePerGas"] = bumped["maxPriorityFeePerGas"], bumped["maxFeePerGas"]
        logger.warning(
            "transaction 0x%s from %s (nonce %s) had no receipt after %.0fs: re-sent as 0x%s with max fee %d, tip %d "
            "(bump %d of %d)",
            sent[-1].hex(), self.address, tx["nonce"], self.bump_after, tx_hash.hex(), max_fee,
            bumped["maxPriorityFeePerGas"], attempt, self.max_bumps,
        )  # fmt: skip
        return tx_hash

    def _sign_and_send(self, tx: TxParams) -> HexBytes:
        with self._lock:
            for attempt in range(2):
                if self._nonce is None:
                    self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")
                tx["nonce"] = Nonce(self._nonce)
                signed = self.account.sign_transaction(cast(dict[str, Any], tx))
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                except Web3RPCError as exc:
                    # Someone else used this key (or the chain was rewound): read the nonce again, once.
                    self._nonce = None
                    if attempt == 0 and "nonce" in str(exc).lower():
                        continue
                    raise
                self._nonce += 1
                return tx_hash
        raise AssertionError("unreachable: the loop returns or raises")

    def _explain_failure(self, tx: TxParams, receipt: TxReceipt) -> NoReturn:
        tx_hash = receipt["transactionHash"].hex()
        replay: TxParams = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value")}  # type: ignore[assignment]
        try:
            # History may be pruned (Anvil --prune-history): replay on the latest state, the best we have.
            self.w3.eth.call(replay)
        except ContractLogicError as exc:
            error: ContractRevert = decode_revert(revert_data(exc))
            error.add_note(f"transaction 0x{tx_hash} (mined with status 0)")
            raise error from exc
        raise TransactionFailed(
            f"transaction 0x{tx_hash} from {self.address} was mined with status 0 (gas used {receipt['gasUsed']})"
        )
