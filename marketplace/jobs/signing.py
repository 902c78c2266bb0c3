"""What a node signs for a result: an EIP-191 personal message naming the assignment and the artifact's sha256.
The text is protocol.result_message, which nodeagent.signer signs too."""

from __future__ import annotations

from uuid import UUID

from eth_account import Account
from eth_account.messages import encode_defunct

from protocol import result_message as _protocol_result_message


def result_message(*, assignment_id: UUID | str, sha256: str) -> str:
    return _protocol_result_message(str(assignment_id), sha256)


def result_signer(*, assignment_id: UUID | str, sha256: str, signature: str) -> str | None:
    """The address that signed this result, or None when the signature cannot be recovered."""
    message = encode_defunct(text=result_message(assignment_id=assignment_id, sha256=sha256))
    try:
        return str(Account.recover_message(message, signature=signature))
    except Exception:
        return None
