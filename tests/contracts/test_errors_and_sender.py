"""Revert decoding (selector → exception named after the Solidity error) and the one-sender-per-key nonce."""

from __future__ import annotations

import threading

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from web3 import Web3

from contracts import errors
from contracts.bindings import ComputeToken
from contracts.sender import Sender, parse_private_key


def test_every_custom_error_in_the_abis_has_its_own_exception_class() -> None:
    missing = errors.abi_error_names() - set(errors.ContractRevert.registry)

    assert not missing
    assert len(errors.abi_error_names()) >= 30


def test_every_revert_class_shares_the_one_root() -> None:
    for cls in errors.ContractRevert.registry.values():
        assert issubclass(cls, errors.ChainError)
    assert issubclass(errors.EscrowUnknownJob, errors.EscrowError)
    assert issubclass(errors.ERC20InsufficientAllowance, errors.TokenError)
    assert issubclass(errors.EnforcedPause, errors.AccessError)


def test_revert_data_is_decoded_by_selector_into_named_fields() -> None:
    job_id = b"\x01" * 32
    data = keccak(text="EscrowInsufficientJobBalance(bytes32,uint256,uint256)")[:4] + encode(
        ["bytes32", "uint256", "uint256"], [job_id, 7, 3]
    )

    error = errors.decode_revert("0x" + data.hex())

    assert type(error) is errors.EscrowInsufficientJobBalance
    assert error.fields == {"jobId": job_id, "needed": 7, "remaining": 3}
    assert str(error) == f"EscrowInsufficientJobBalance(jobId=0x{job_id.hex()}, needed=7, remaining=3)"


def test_a_reason_string_and_a_panic_are_decoded_too() -> None:
    reason = errors.decode_revert(bytes.fromhex("08c379a0") + encode(["string"], ["nope"]))
    panic = errors.decode_revert(bytes.fromhex("4e487b71") + encode(["uint256"], [0x12]))

    assert type(reason) is errors.RevertedWithReason
    assert reason.fields == {"reason": "nope"}
    assert type(panic) is errors.Panic
    assert panic.fields == {"code": 0x12}


def test_unknown_or_truncated_revert_data_is_kept_raw() -> None:
    unknown = errors.decode_revert(b"\xde\xad\xbe\xef\x00")
    truncated = errors.decode_revert(keccak(text="EscrowUnknownJob(bytes32)")[:4] + b"\x01")
    empty = errors.decode_revert(None)

    assert type(unknown) is errors.UnknownRevert
    assert unknown.data == b"\xde\xad\xbe\xef\x00"
    assert type(truncated) is errors.UnknownRevert
    assert truncated.error_name == "EscrowUnknownJob"
    assert type(empty) is errors.UnknownRevert


@pytest.mark.parametrize("raw", ["", "0x12", "0x" + "g" * 64, "0x" + "00" * 32, "1" * 63])
def test_a_malformed_private_key_is_refused_with_the_name_given(raw: str) -> None:
    with pytest.raises(errors.InvalidKey, match="HASHWORK_DEPLOYER_KEY"):
        parse_private_key(raw, name="HASHWORK_DEPLOYER_KEY")


def test_a_private_key_without_0x_is_accepted() -> None:
    assert parse_private_key("ab" * 32) == "0x" + "ab" * 32


def test_one_sender_keeps_its_nonce_across_threads(w3: Web3, token: ComputeToken, admin: Sender, node: Sender) -> None:
    minter = token.connect(admin)
    start_nonce = w3.eth.get_transaction_count(admin.address)
    failures: list[BaseException] = []

    def mint() -> None:
        try:
            minter.mint(node.address, 1)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=mint) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert token.balance_of(node.address) == 8
    assert w3.eth.get_transaction_count(admin.address) == start_nonce + 8


def test_a_sender_recovers_when_someone_else_used_its_key(w3: Web3, token: ComputeToken, admin: Sender) -> None:
    twin = Sender(w3, admin.account.key)
    token.connect(admin).mint(admin.address, 1)  # admin now caches its next nonce
    token.connect(twin).mint(admin.address, 1)  # the twin used that nonce behind its back

    token.connect(admin).mint(admin.address, 1)

    assert token.balance_of(admin.address) == 3


def test_a_write_without_a_sender_says_how_to_get_one(token: ComputeToken, node: Sender) -> None:
    with pytest.raises(errors.ChainError, match="connect"):
        token.transfer(node.address, 1)
