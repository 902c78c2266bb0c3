"""Sign and send the transactions of one key: the sender owns the key's nonce, decodes reverts, awaits receipts."""

from __future__ import annotations

import re
import threading
from typing import Any, NoReturn, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from contracts.artifacts import Artifact
from contracts.errors import ContractRevert, InvalidKey, TransactionFailed, TransactionTimeout, decode_revert

_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
DEFAULT_RECEIPT_TIMEOUT = 120.0


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
    """

    def __init__(self, w3: Web3, key: str | bytes, *, receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT) -> None:
        if isinstance(key, str):
            key = parse_private_key(key)
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(key)
        self.address: ChecksumAddress = self.account.address
        self.receipt_timeout = receipt_timeout
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
            tx["maxPriorityFeePerGas"] = priority
            tx["maxFeePerGas"] = Wei(2 * base_fee + priority)
            tx_hash = self._sign_and_send(tx)
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout, poll_latency=0.05)
        except TimeExhausted as exc:
            raise TransactionTimeout(
                f"transaction 0x{tx_hash.hex()} from {self.address} has no receipt after {self.receipt_timeout}s"
            ) from exc
        if receipt["status"] != 1:
            self._explain_failure(tx, receipt)
        return receipt

    def deploy(self, artifact: Artifact, *args: Any) -> TxReceipt:
        """Deploy `artifact` with constructor `args`; the receipt's contractAddress is the new contract."""
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=HexStr(artifact.bytecode))
        data = factory.constructor(*args).data_in_transaction
        return self.send(to=None, data=data)

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
