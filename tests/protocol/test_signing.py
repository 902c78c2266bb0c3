"""The result signing text: one definition, which the agent signs and the marketplace verifies."""

from __future__ import annotations

import hashlib
from uuid import UUID

from marketplace.jobs import signing
from nodeagent import signer
from nodeagent.signer import Wallet
from protocol import result_message

ASSIGNMENT = "8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b10"
SHA256 = hashlib.sha256(b"artifact").hexdigest()


def test_the_signing_text_names_the_assignment_and_the_sha256() -> None:
    # Deployed agents sign exactly this text: changing it is a new protocol version.
    assert result_message(ASSIGNMENT, SHA256) == f"Hashwork result\nassignment: {ASSIGNMENT}\nsha256: {SHA256}"


def test_both_sides_take_the_text_from_the_protocol() -> None:
    assert signer.result_message is result_message
    assert signing.result_message(assignment_id=UUID(ASSIGNMENT), sha256=SHA256) == result_message(ASSIGNMENT, SHA256)


def test_the_marketplace_verifies_a_signature_the_agent_made() -> None:
    wallet = Wallet.create()
    signature = wallet.sign_result(ASSIGNMENT, SHA256)
    assert signing.result_signer(assignment_id=UUID(ASSIGNMENT), sha256=SHA256, signature=signature) == wallet.address


def test_a_signature_over_another_artifact_recovers_another_address() -> None:
    wallet = Wallet.create()
    signature = wallet.sign_result(ASSIGNMENT, hashlib.sha256(b"other").hexdigest())
    assert signing.result_signer(assignment_id=ASSIGNMENT, sha256=SHA256, signature=signature) != wallet.address
