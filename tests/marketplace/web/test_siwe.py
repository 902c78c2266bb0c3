"""Every rule of `siwe.verify`, at a fixed `now`, with the real nonce store on the real database; and the
database's own guarantee that one address is linked to one account."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from marketplace.web import signin, siwe
from marketplace.web.models import Profile, SiweNonce

pytestmark = pytest.mark.django_db

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EXPECTED = siwe.Expected(
    domain="hashwork.test", uri="https://hashwork.test", chain_id=31337, statement=siwe.LOGIN_STATEMENT
)


def _user(username: str, **fields: Any) -> Any:
    return get_user_model().objects.create_user(username=username, **fields)


@pytest.fixture
def wallet() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def _message(wallet: LocalAccount, *, now: datetime = T, nonce: str | None = None, **fields: Any) -> siwe.SiweMessage:
    message = siwe.message_for(
        domain=EXPECTED.domain, address=wallet.address, uri=EXPECTED.uri, chain_id=EXPECTED.chain_id,
        nonce=nonce or signin.siwe_nonce_issue(now=now), statement=EXPECTED.statement, now=now,
    )  # fmt: skip
    return dataclasses.replace(message, **fields)


def _sign(account: LocalAccount, text: str) -> str:
    return "0x" + account.sign_message(encode_defunct(text=text)).signature.hex().removeprefix("0x")


def _verify(text: str, signature: str, *, now: datetime = T, expected: siwe.Expected = EXPECTED) -> str:
    return siwe.verify(
        text=text, signature=signature, expected=expected, consume_nonce=signin.siwe_nonce_consume, now=now
    )


def _refused(text: str, signature: str, match: str, *, now: datetime = T) -> None:
    nonces = list(SiweNonce.objects.values_list("value", "used_at"))
    with pytest.raises(siwe.SiweError, match=match):
        _verify(text, signature, now=now)
    assert list(SiweNonce.objects.values_list("value", "used_at")) == nonces  # a refusal changes nothing


def test_a_message_signed_by_its_address_is_accepted_once_and_its_nonce_is_used(wallet: LocalAccount) -> None:
    message = _message(wallet)
    assert message.address == wallet.address  # EIP-55
    assert siwe.parse(message.text()) == message
    assert (
        _verify(message.text(), _sign(wallet, message.text()), now=T + timedelta(minutes=3)) == wallet.address.lower()
    )
    assert SiweNonce.objects.get(value=message.nonce).used_at == T + timedelta(minutes=3)


def test_a_message_older_than_max_age_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet, expiration_time=None).text()
    _refused(text, _sign(wallet, text), "Issued At is too long ago", now=T + siwe.MAX_AGE + timedelta(seconds=1))


def test_a_message_past_its_expiration_time_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet, expiration_time=T + timedelta(minutes=2)).text()
    assert "\nExpiration Time: 2026-12-01T12:02:00Z" in text
    _refused(text, _sign(wallet, text), "Expiration Time has passed", now=T + timedelta(minutes=2))


def test_a_message_before_its_not_before_time_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet, not_before=T + timedelta(minutes=5)).text()
    _refused(text, _sign(wallet, text), "Not Before is in the future", now=T)
    assert _verify(text, _sign(wallet, text), now=T + timedelta(minutes=5)) == wallet.address.lower()


def test_a_message_issued_in_the_future_beyond_the_clock_skew_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet).text()
    _refused(text, _sign(wallet, text), "Issued At is in the future", now=T - siwe.CLOCK_SKEW - timedelta(seconds=1))
    assert _verify(text, _sign(wallet, text), now=T - siwe.CLOCK_SKEW) == wallet.address.lower()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("domain", "evil.example", r"for evil\.example, not hashwork\.test \(domain\)"),
        ("uri", "https://evil.example", r"URI is https://evil\.example, not this site's"),
        ("uri", "http://hashwork.test", r"URI is http://hashwork\.test"),
        ("chain_id", 1, "for chain 1, not this marketplace's 31337"),
        ("statement", siwe.LINK_STATEMENT, "issued for another use"),
        ("version", "2", "only version 1"),
    ],
)
def test_a_message_for_another_site_chain_use_or_version_is_refused(
    wallet: LocalAccount, field: str, value: Any, match: str
) -> None:
    text = _message(wallet, **{field: value}).text()
    _refused(text, _sign(wallet, text), match)


def test_a_replayed_message_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet).text()
    signature = _sign(wallet, text)
    _verify(text, signature)
    with pytest.raises(siwe.SiweError, match="nonce was used already"):
        _verify(text, signature, now=T + timedelta(seconds=1))


def test_a_nonce_the_server_never_issued_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet, nonce=siwe.new_nonce()).text()
    with pytest.raises(siwe.SiweError, match="not issued by this server"):
        _verify(text, _sign(wallet, text))


def test_an_expired_nonce_is_refused(wallet: LocalAccount) -> None:
    nonce = signin.siwe_nonce_issue(now=T)
    # A message issued late with an early nonce: the message is young, its nonce is not.
    text = _message(wallet, nonce=nonce, now=T + timedelta(minutes=9)).text()
    with pytest.raises(siwe.SiweError, match="nonce has expired"):
        _verify(text, _sign(wallet, text), now=T + siwe.MAX_AGE + timedelta(seconds=1))


def test_a_message_changed_after_signing_is_refused(wallet: LocalAccount) -> None:
    message = _message(wallet)
    signature = _sign(wallet, message.text())
    tampered = dataclasses.replace(message, issued_at=T + timedelta(seconds=1)).text()
    _refused(tampered, signature, "not made by the address in the message")
    assert _verify(message.text(), signature) == wallet.address.lower()  # the refusal left its nonce unused


def test_a_signature_by_another_key_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet).text()
    _refused(text, _sign(Account.create(), text), "not made by the address in the message")


def test_an_address_that_is_not_checksummed_is_refused(wallet: LocalAccount) -> None:
    while wallet.address.lower() == wallet.address:  # its checksum form has no capital letter: rare, but not lower
        wallet = Account.create()
    text = _message(wallet, address=wallet.address.lower()).text()
    _refused(text, _sign(wallet, text), "EIP-55")


def test_a_malformed_signature_or_text_is_refused(wallet: LocalAccount) -> None:
    text = _message(wallet).text()
    _refused(text, "0x1234", "not a valid Ethereum signature")
    _refused("hello", _sign(wallet, "hello"), "not a Sign-In with Ethereum message")
    _refused(text.replace("Issued At: 2026-12-01T12:00:00Z", "Issued At: noon"), "0x", "Issued At is not")


def test_the_database_links_one_address_to_one_account_whatever_its_case(wallet: LocalAccount) -> None:
    Profile.objects.create(user=_user("first"), wallet_address=wallet.address.lower())
    with pytest.raises(IntegrityError), transaction.atomic():
        Profile.objects.create(user=_user("second"), wallet_address=wallet.address.lower())
    with pytest.raises(IntegrityError), transaction.atomic():
        Profile.objects.create(user=_user("third"), wallet_address=wallet.address)
    assert Profile.objects.filter(wallet_address__iexact=wallet.address).count() == 1


def test_a_wallet_signs_in_to_one_account_made_on_its_first_sign_in(wallet: LocalAccount) -> None:
    user, created = signin.wallet_sign_in(address=wallet.address.lower())
    assert created
    assert not user.has_usable_password()
    assert user.username == f"wallet-{wallet.address.lower()[2:10]}"
    assert signin.wallet_sign_in(address=wallet.address.lower()) == (user, False)
