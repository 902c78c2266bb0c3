"""Sign-In with Ethereum (EIP-4361) messages: built by the server with a one-time nonce, signed by the browser
wallet (personal_sign, EIP-191), checked here by recovering the signer.

The `siwe` package on PyPI pins web3<8 (this project is on web3 8), so the message format is implemented here;
it is small: https://eips.ethereum.org/EIPS/eip-4361."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eth_account import Account
from eth_account.messages import encode_defunct

STATEMENT = "Link this wallet to my Hashwork account."
MAX_AGE = timedelta(minutes=10)
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MESSAGE_RE = re.compile(
    r"^(?P<domain>[^\n ]+) wants you to sign in with your Ethereum account:\n"
    r"(?P<address>0x[0-9a-fA-F]{40})\n\n"
    r"(?P<statement>[^\n]*)\n\n"
    r"URI: (?P<uri>[^\n]+)\n"
    r"Version: 1\n"
    r"Chain ID: (?P<chain_id>[0-9]+)\n"
    r"Nonce: (?P<nonce>[0-9a-zA-Z]{8,})\n"
    r"Issued At: (?P<issued_at>[^\n]+)$"
)


class SiweError(ValueError):
    """Why a signed message is not accepted."""


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    statement: str = STATEMENT

    def text(self) -> str:
        stamp = self.issued_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"{self.domain} wants you to sign in with your Ethereum account:\n{self.address}\n\n{self.statement}\n\n"
            f"URI: {self.uri}\nVersion: 1\nChain ID: {self.chain_id}\nNonce: {self.nonce}\nIssued At: {stamp}"
        )


def new_nonce() -> str:
    return secrets.token_hex(12)


def message_for(*, domain: str, address: str, uri: str, chain_id: int, nonce: str) -> SiweMessage:
    if not ADDRESS_RE.match(address):
        raise SiweError("That is not an Ethereum address (0x and 40 hex digits).")
    return SiweMessage(domain, address, uri, chain_id, nonce, datetime.now(UTC).replace(microsecond=0))


def parse(text: str) -> SiweMessage:
    match = _MESSAGE_RE.match(text.replace("\r\n", "\n").strip())
    if match is None:
        raise SiweError("The signed text is not a Sign-In with Ethereum message.")
    try:
        issued = datetime.strptime(match["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SiweError("The message's Issued At is not an ISO 8601 UTC time.") from None
    return SiweMessage(
        match["domain"], match["address"], match["uri"], int(match["chain_id"]), match["nonce"], issued,
        match["statement"],
    )  # fmt: skip


def verify(*, text: str, signature: str, domain: str, nonce: str | None, now: datetime | None = None) -> str:
    """The lower-case address that signed `text`, if it is our message for this domain and session nonce."""
    message = parse(text)
    now = now or datetime.now(UTC)
    if nonce is None or not secrets.compare_digest(message.nonce, nonce):
        raise SiweError("This sign-in message was not issued to this session (or was used already): start again.")
    if message.domain != domain:
        raise SiweError(f"The message is for {message.domain}, not {domain}.")
    if not now - MAX_AGE <= message.issued_at <= now + timedelta(minutes=1):
        raise SiweError("The sign-in message has expired: start again.")
    try:
        signer = Account.recover_message(encode_defunct(text=message.text()), signature=signature)
    except Exception:  # malformed signatures raise several types
        raise SiweError("The signature is not a valid Ethereum signature.") from None
    if signer.lower() != message.address.lower():
        raise SiweError("The signature was not made by the address in the message.")
    return signer.lower()
