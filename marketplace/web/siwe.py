"""Sign-In with Ethereum (EIP-4361) messages: built by the server with a one-time nonce, signed by the browser
wallet (personal_sign, EIP-191), checked here by recovering the signer.

The `siwe` package on PyPI pins web3<8 (this project is on web3 8), so the message format is implemented here;
it is small: https://eips.ethereum.org/EIPS/eip-4361. The nonce store is the caller's (`NonceConsumer`): this
module knows nothing of the database."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from eth_account import Account
from eth_account.messages import encode_defunct
from web3 import Web3

LINK_STATEMENT = "Link this wallet to my Hashwork account."
LOGIN_STATEMENT = "Sign in to Hashwork with this wallet."
# A message (and its nonce) is good for this long after it is issued.
MAX_AGE = timedelta(minutes=10)
# How far ahead of our clock a timestamp in the message may be (the wallet's clock is not ours).
CLOCK_SKEW = timedelta(minutes=1)
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
SIGNATURE_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")
# The messages this server issues are about 400 characters; a longer text is none of them (and is not parsed).
MAX_MESSAGE_CHARS = 4096
# EIP-155 chain ids are unsigned integers; nothing above 2**256 - 1 names a chain.
MAX_CHAIN_ID = 2**256 - 1
_MESSAGE_RE = re.compile(
    r"^(?P<domain>[^\n ]+) wants you to sign in with your Ethereum account:\n"
    r"(?P<address>0x[0-9a-fA-F]{40})\n\n"
    r"(?:(?P<statement>[^\n]+)\n)?\n"
    r"URI: (?P<uri>[^\n]+)\n"
    r"Version: (?P<version>[^\n]+)\n"
    r"Chain ID: (?P<chain_id>[0-9]+)\n"
    r"Nonce: (?P<nonce>[0-9a-zA-Z]{8,})\n"
    r"Issued At: (?P<issued_at>[^\n]+)"
    r"(?:\nExpiration Time: (?P<expiration_time>[^\n]+))?"
    r"(?:\nNot Before: (?P<not_before>[^\n]+))?"
    r"(?:\nRequest ID: (?P<request_id>[^\n]*))?"
    r"(?:\nResources:(?P<resources>(?:\n- [^\n]+)+))?$"
)


class SiweError(ValueError):
    """Why a signed message is not accepted (the text names the rule)."""


class NonceConsumer(Protocol):
    """Marks a server-issued nonce used, once: raises SiweError when it is unknown, expired or used already."""

    def __call__(self, nonce: str, *, now: datetime) -> None: ...


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    statement: str | None = LINK_STATEMENT
    version: str = "1"
    expiration_time: datetime | None = None
    not_before: datetime | None = None

    def text(self) -> str:
        """The message as the wallet shows and signs it (the optional fields we issue: none but the times)."""
        statement = f"{self.statement}\n" if self.statement else ""
        text = (
            f"{self.domain} wants you to sign in with your Ethereum account:\n{self.address}\n\n{statement}\n"
            f"URI: {self.uri}\nVersion: {self.version}\nChain ID: {self.chain_id}\nNonce: {self.nonce}\n"
            f"Issued At: {_stamp(self.issued_at)}"
        )
        if self.expiration_time is not None:
            text += f"\nExpiration Time: {_stamp(self.expiration_time)}"
        if self.not_before is not None:
            text += f"\nNot Before: {_stamp(self.not_before)}"
        return text


@dataclass(frozen=True)
class Expected:
    """What this server accepts: the request's host, the site's origin, the marketplace's chain, the purpose."""

    domain: str
    uri: str
    chain_id: int
    statement: str


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SiweError(f"The message's {field} is not an RFC 3339 time.") from None
    if moment.tzinfo is None:
        raise SiweError(f"The message's {field} has no time zone.")
    return moment


def new_nonce() -> str:
    """A fresh random nonce (EIP-4361: at least 8 alphanumerics); the caller stores it with its expiry."""
    return secrets.token_hex(16)


def message_for(
    *, domain: str, address: str, uri: str, chain_id: int, nonce: str, statement: str = LINK_STATEMENT,
    now: datetime | None = None,
) -> SiweMessage:  # fmt: skip
    """Our message for `address` (checksummed here, EIP-55), issued now and expiring after MAX_AGE."""
    if not ADDRESS_RE.match(address):
        raise SiweError("That is not an Ethereum address (0x and 40 hex digits).")
    issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return SiweMessage(
        domain, Web3.to_checksum_address(address), uri, chain_id, nonce, issued, statement,
        expiration_time=issued + MAX_AGE,
    )  # fmt: skip


def parse(text: str) -> SiweMessage:
    """The fields of an EIP-4361 message; SiweError when the text is not one (or is longer than any we issue)."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise SiweError(f"The signed text is longer than {MAX_MESSAGE_CHARS} characters: no message we issue is.")
    match = _MESSAGE_RE.match(text)
    if match is None:
        raise SiweError("The signed text is not a Sign-In with Ethereum message.")
    # At most MAX_MESSAGE_CHARS digits: int() stays under Python's 4300-digit conversion limit (a ValueError).
    chain_id = int(match["chain_id"])
    if chain_id > MAX_CHAIN_ID:
        raise SiweError("The message's Chain ID is larger than any chain id (2**256 - 1).")
    expires, not_before = match["expiration_time"], match["not_before"]
    return SiweMessage(
        match["domain"], match["address"], match["uri"], chain_id, match["nonce"],
        _time(match["issued_at"], "Issued At"), match["statement"], match["version"],
        _time(expires, "Expiration Time") if expires is not None else None,
        _time(not_before, "Not Before") if not_before is not None else None,
    )  # fmt: skip


def verify(
    *, text: str, signature: str, expected: Expected, consume_nonce: NonceConsumer, now: datetime | None = None
) -> str:
    """The lower-case address that signed `text`, if it is a message this server issued for `expected` and it
    is signed by its own address. The nonce is consumed last, so a refused message leaves it (and everything
    else) as it was; a message that passes every rule can be used only once, in any session."""
    message = parse(text)
    now = now or datetime.now(UTC)
    if message.version != "1":
        raise SiweError(f"The message's Version is {message.version}; only version 1 is accepted.")
    if message.domain != expected.domain:
        raise SiweError(f"The message is for {message.domain}, not {expected.domain} (domain).")
    if message.uri != expected.uri:
        raise SiweError(f"The message's URI is {message.uri}, not this site's {expected.uri}.")
    if message.chain_id != expected.chain_id:
        raise SiweError(f"The message is for chain {message.chain_id}, not this marketplace's {expected.chain_id}.")
    if message.statement != expected.statement:
        raise SiweError(f"The message's statement is not {expected.statement!r}: it was issued for another use.")
    if not Web3.is_checksum_address(message.address):
        raise SiweError("The message's address is not EIP-55 checksummed.")
    if message.issued_at > now + CLOCK_SKEW:
        raise SiweError("The message's Issued At is in the future: check your clock and start again.")
    if message.issued_at < now - MAX_AGE:
        raise SiweError("The sign-in message has expired (Issued At is too long ago): start again.")
    if message.expiration_time is not None and message.expiration_time <= now:
        raise SiweError("The sign-in message has expired (Expiration Time has passed): start again.")
    if message.not_before is not None and message.not_before > now + CLOCK_SKEW:
        raise SiweError("The sign-in message is not valid yet (Not Before is in the future).")
    try:
        signer = str(Account.recover_message(encode_defunct(text=text), signature=signature))
    except Exception:  # malformed signatures raise several types
        raise SiweError("The signature is not a valid Ethereum signature.") from None
    if signer != message.address:
        raise SiweError("The signature was not made by the address in the message.")
    consume_nonce(message.nonce, now=now)
    return signer.lower()
