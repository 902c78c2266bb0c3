"""The node's wallet: signs each result (EIP-191) so the marketplace knows which wallet vouches for it."""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct

from protocol import result_message

__all__ = ["Wallet", "result_message"]


class Wallet:
    def __init__(self, private_key: str) -> None:
        self._account = Account.from_key(private_key)

    @classmethod
    def create(cls) -> Wallet:
        return cls(Account.create().key.hex())

    @property
    def address(self) -> str:
        return str(self._account.address)

    @property
    def private_key(self) -> str:
        return "0x" + bytes(self._account.key).hex().removeprefix("0x")

    def sign_result(self, assignment_id: str, sha256: str) -> str:
        signed = self._account.sign_message(encode_defunct(text=result_message(assignment_id, sha256)))
        return "0x" + bytes(signed.signature).hex().removeprefix("0x")
