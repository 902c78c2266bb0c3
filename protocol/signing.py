"""What a node signs for a result (EIP-191 personal message), the one text both sides sign and verify."""

from __future__ import annotations


def result_message(assignment_id: str, sha256: str) -> str:
    """The text a node signs to vouch for the artifact with this sha256 as the result of this assignment."""
    return f"Hashwork result\nassignment: {assignment_id}\nsha256: {sha256}"
