"""Open a synchronous web3 connection to a chain's JSON-RPC URL, failing early with a clear message."""

from __future__ import annotations

from urllib.parse import urlsplit

from web3 import Web3
from web3.exceptions import Web3Exception

from contracts.errors import ChainError


def connect(url: str, *, timeout: float = 30.0) -> Web3:
    """A Web3 for an http(s) JSON-RPC URL that answered eth_chainId; ChainError otherwise."""
    scheme = urlsplit(url).scheme
    if scheme in {"ws", "wss"}:
        raise ChainError(
            f"{url} is a WebSocket URL; the contract bindings are synchronous and need the chain's http(s) URL"
        )
    if scheme not in {"http", "https"}:
        raise ChainError(f"{url!r} is not an http(s) JSON-RPC URL")
    # cache_allowed_requests: web3 checks eth_chainId before every call and transaction; ask the node once.
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True))
    try:
        w3.eth.chain_id  # noqa: B018 - the first request proves the node answers
    # requests' connection errors are OSErrors; a node that answers garbage raises a web3 error.
    except (OSError, Web3Exception) as exc:
        raise ChainError(f"the chain at {url} does not answer ({type(exc).__name__}: {exc})") from exc
    return w3
