"""Malformed Sign-In with Ethereum input is a 4xx that names the problem, never a 500, and changes nothing: no
session, no account, the nonce still unused, so the honest sign-in that follows works. Before, a Chain ID of
thousands of digits made int() raise a ValueError (a 500), an oversized body got Django's bare HTML page, and a
non-string `next` was taken as a redirect path.

Django's test client drives the dashboard's real endpoints on the real database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user, get_user_model
from django.test import Client
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.web import siwe
from marketplace.web.models import SiweNonce

pytestmark = pytest.mark.django_db

MESSAGE_URL = "/accounts/siwe/login/message/"
LOGIN_URL = "/accounts/siwe/login/"


def _issued(browser: Client, wallet: LocalAccount) -> tuple[str, str]:
    message = str(browser.get(f"{MESSAGE_URL}?address={wallet.address}").json()["message"])
    return message, "0x" + wallet.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def _post(browser: Client, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body)
    return browser.post(LOGIN_URL, raw, content_type="application/json")


def _nothing_happened(browser: Client, message: str) -> None:
    assert not get_user(browser).is_authenticated
    assert not get_user_model().objects.exists()
    nonce = siwe.parse(message).nonce
    assert SiweNonce.objects.filter(value=nonce, used_at__isnull=True).exists()


def _with_line(message: str, label: str, value: str) -> str:
    lines = [f"{label}: {value}" if line.startswith(f"{label}: ") else line for line in message.split("\n")]
    return "\n".join(lines)


MALFORMED: list[tuple[str, Any, str]] = [
    ("a list", [1, 2], "JSON object"),
    ("a string", "message", "JSON object"),
    ("null", None, "JSON object"),
    ("no signature", {"message": "M"}, "signature: This field is required."),
    ("no message", {"signature": "S"}, "message: This field is required."),
    ("a signature of the wrong length", {"message": "M", "signature": "0x1234"}, "signature: Must be 0x and 130"),
    ("a signature that is a list", {"message": "M", "signature": [1]}, "signature: "),
    ("a signature that is not hex", {"message": "M", "signature": "0x" + "zz" * 65}, "signature: Must be 0x"),
    ("a message that is an object", {"message": {"a": 1}, "signature": "S"}, "message: "),
    ("a message longer than any issued", {"message": "x" * 5000, "signature": "S"}, "message: "),
    ("a next that is an object", {"message": "M", "signature": "S", "next": {"a": 1}}, "next: "),
]


@pytest.mark.parametrize(("name", "body", "error"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_field_is_a_400_naming_it_and_changes_nothing(name: str, body: Any, error: str) -> None:
    browser = Client()
    wallet: LocalAccount = Account.create()
    message, signature = _issued(browser, wallet)
    if isinstance(body, dict):  # the issued message and a real signature wherever the case keeps them
        body = {k: message if v == "M" else signature if v == "S" else v for k, v in body.items()}
    response = _post(browser, body)
    assert response.status_code == 400, response.content
    assert error in response.json()["error"]
    _nothing_happened(browser, message)
    assert _post(browser, {"message": message, "signature": signature}).status_code == 200


@pytest.mark.parametrize(
    ("label", "value", "error"),
    [
        ("Chain ID", "9" * 3500, "Chain ID is larger than any chain id"),
        ("Chain ID", "9" * 5000, "no more than 4096 characters"),
        ("Chain ID", "abc", "not a Sign-In with Ethereum message"),
        ("Chain ID", str(2**256), "Chain ID is larger than any chain id"),
        ("Issued At", "0001-01-01T00:00:00+14:00", "expired"),
        ("Issued At", "yesterday", "not an RFC 3339 time"),
        ("Expiration Time", "9999-12-31T23:59:59-14:00", "signature was not made"),
        ("Nonce", "n" * 3000, "nonce was not issued|signature was not made"),
    ],
)
def test_a_mangled_message_line_is_a_400_and_changes_nothing(label: str, value: str, error: str) -> None:
    browser = Client()
    wallet: LocalAccount = Account.create()
    message, signature = _issued(browser, wallet)
    mangled = _with_line(message, label, value)
    response = _post(browser, {"message": mangled, "signature": signature})
    assert response.status_code == 400, response.content
    assert any(part in response.json()["error"] for part in error.split("|")), response.json()
    _nothing_happened(browser, message)


def test_a_body_that_is_not_json_or_not_utf8_is_a_400() -> None:
    browser = Client()
    message, _ = _issued(browser, Account.create())
    for raw in (b"not json", b"\xff\xfe{}", b"{" * 10_000):
        response = _post(browser, raw)
        assert response.status_code == 400
        assert "JSON object" in response.json()["error"]
    _nothing_happened(browser, message)


def test_a_body_over_the_cap_is_a_413_naming_it_and_is_not_read() -> None:
    browser = Client()
    wallet: LocalAccount = Account.create()
    message, signature = _issued(browser, wallet)
    response = _post(browser, {"message": message, "signature": signature, "pad": "p" * 20_000})
    assert response.status_code == 413
    assert "16384 bytes" in response.json()["error"]
    _nothing_happened(browser, message)


def test_a_used_nonce_is_refused_with_a_400_and_logs_nobody_else_in() -> None:
    first, second = Client(), Client()
    wallet: LocalAccount = Account.create()
    message, signature = _issued(first, wallet)
    assert _post(first, {"message": message, "signature": signature}).status_code == 200
    replay = _post(second, {"message": message, "signature": signature})
    assert replay.status_code == 400
    assert "used already" in replay.json()["error"]
    assert not get_user(second).is_authenticated


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.fixed_dictionaries(
        {}, optional={"message": JSON_VALUES, "signature": JSON_VALUES, "next": JSON_VALUES, "extra": JSON_VALUES}
    )
    | JSON_VALUES
)
def test_any_json_body_is_answered_with_a_4xx_never_a_500(body: Any) -> None:
    browser = Client(raise_request_exception=False)
    response = _post(browser, body)
    assert 400 <= response.status_code < 500, (body, response.content)
    assert response.json()["error"]
    assert not get_user(browser).is_authenticated


def test_the_message_endpoint_ignores_a_non_integer_chain_id_and_checks_the_address() -> None:
    browser = Client(raise_request_exception=False)
    wallet: LocalAccount = Account.create()
    ok = browser.get(f"{MESSAGE_URL}?address={wallet.address}&chain_id=not-a-number")
    assert ok.status_code == 200
    assert siwe.parse(ok.json()["message"]).chain_id == 31337
    for address in ("0x" + "g" * 40, "0x" + "a" * 4000, "", "%00"):
        refused = browser.get(f"{MESSAGE_URL}?address={address}")
        assert refused.status_code == 400
        assert "Ethereum address" in refused.json()["error"]
