"""Signing up and logging in with a wallet alone, through the dashboard's endpoints with Django's test client on the
real database; password log-in and wallet linking keep working beside it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user, get_user_model
from django.http import HttpResponse
from django.test import Client
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from marketplace.web import siwe
from marketplace.web.models import Profile, SiweNonce

pytestmark = pytest.mark.django_db

MESSAGE_URL = "/accounts/siwe/login/message/"
LOGIN_URL = "/accounts/siwe/login/"


def _user(username: str, **fields: Any) -> Any:
    return get_user_model().objects.create_user(username=username, **fields)


@pytest.fixture
def wallet() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def _signed(browser: Client, wallet: LocalAccount, url: str = MESSAGE_URL) -> tuple[str, str]:
    response = browser.get(f"{url}?address={wallet.address}&chain_id=1")
    assert response.status_code == 200, response.json()
    message = str(response.json()["message"])
    return message, "0x" + wallet.sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")


def _post(browser: Client, message: str, signature: str, **extra: str) -> HttpResponse:
    body = json.dumps({"message": message, "signature": signature, **extra})
    response: HttpResponse = browser.post(LOGIN_URL, body, content_type="application/json")
    return response


def _sign_in(browser: Client, wallet: LocalAccount, **extra: str) -> HttpResponse:
    return _post(browser, *_signed(browser, wallet), **extra)


def _logged_in(browser: Client) -> Any:
    user = get_user(browser)  # the test client carries the session a request would
    return user if user.is_authenticated else None


def test_the_login_page_offers_sign_in_with_ethereum_beside_the_password() -> None:
    page = Client().get("/accounts/login/?next=/nodes/")
    assert b'id="siwe-login"' in page.content
    assert b"Sign in with Ethereum" in page.content
    assert b"/accounts/siwe/login/message/" in page.content
    assert b'name="password"' in page.content


def test_the_message_names_this_site_the_marketplace_chain_and_a_stored_nonce(wallet: LocalAccount) -> None:
    message = siwe.parse(_signed(Client(), wallet)[0])
    assert (message.domain, message.uri, message.chain_id) == ("testserver", "http://testserver", 31337)
    assert message.address == wallet.address
    assert message.statement == siwe.LOGIN_STATEMENT
    assert SiweNonce.objects.filter(value=message.nonce, used_at__isnull=True).exists()


def test_a_first_sign_in_creates_the_account_with_its_wallet_and_logs_it_in(wallet: LocalAccount) -> None:
    browser = Client()
    response = _sign_in(browser, wallet)
    assert response.status_code == 200, response.json()
    answer = response.json()
    user = get_user_model().objects.get(username=answer["username"])
    assert answer == {
        "address": wallet.address.lower(),
        "username": user.username,
        "created": True,
        "redirect": "/jobs/",
    }
    assert _logged_in(browser) == user
    assert not user.has_usable_password()
    assert Profile.objects.get(user=user).wallet_address == wallet.address.lower()
    assert b"Your wallet is your login" in browser.get("/jobs/").content


def test_a_second_sign_in_logs_into_the_same_account(wallet: LocalAccount) -> None:
    first = _sign_in(Client(), wallet).json()
    browser = Client()
    again = _sign_in(browser, wallet, next="/nodes/").json()
    assert again["username"] == first["username"]
    assert again["created"] is False
    assert again["redirect"] == "/nodes/"
    assert _logged_in(browser).username == first["username"]
    assert get_user_model().objects.filter(profile__wallet_address=wallet.address.lower()).count() == 1
    assert get_user_model().objects.count() == 1


def test_a_replayed_signed_message_is_refused_in_any_session(wallet: LocalAccount) -> None:
    browser = Client()
    message, signature = _signed(browser, wallet)
    assert _post(browser, message, signature).status_code == 200
    browser.logout()
    for replayer in (browser, Client()):
        refused = _post(replayer, message, signature)
        assert refused.status_code == 400
        assert "used already" in refused.json()["error"]
        assert _logged_in(replayer) is None
    assert get_user_model().objects.count() == 1


def test_a_refused_sign_in_creates_no_account_and_logs_nobody_in(wallet: LocalAccount) -> None:
    browser = Client()
    message, _ = _signed(browser, wallet)
    forged = "0x" + Account.create().sign_message(encode_defunct(text=message)).signature.hex().removeprefix("0x")
    refused = _post(browser, message, forged)
    assert refused.status_code == 400
    assert "not made by the address" in refused.json()["error"]
    assert _logged_in(browser) is None
    assert not get_user_model().objects.exists()
    assert not Profile.objects.exists()
    assert _post(browser, "", "").status_code == 400
    assert browser.post(LOGIN_URL, "not json", content_type="application/json").status_code == 400


def test_a_link_message_does_not_log_in(wallet: LocalAccount) -> None:
    alice = _user("alice")
    browser = Client()
    browser.force_login(alice)
    message, signature = _signed(browser, wallet, url="/accounts/siwe/message/")
    browser.logout()
    refused = _post(browser, message, signature)
    assert refused.status_code == 400
    assert "issued for another use" in refused.json()["error"]
    assert _logged_in(browser) is None


def test_a_wallet_linked_on_the_dashboard_logs_into_that_account(wallet: LocalAccount) -> None:
    alice = _user("alice", password="correct horse battery")
    browser = Client()
    assert (
        browser.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}).status_code == 302
    )
    assert _logged_in(browser) == alice
    message, signature = _signed(browser, wallet, url="/accounts/siwe/message/")
    linked = browser.post(
        "/accounts/siwe/verify/",
        json.dumps({"message": message, "signature": signature}),
        content_type="application/json",
    )
    assert linked.status_code == 200, linked.json()
    assert Profile.objects.get(user=alice).wallet_address == wallet.address.lower()
    browser.logout()
    answer = _sign_in(browser, wallet).json()
    assert answer["username"] == "alice"
    assert answer["created"] is False
    assert _logged_in(browser) == alice
    assert get_user_model().objects.count() == 1


def test_a_deactivated_account_cannot_sign_in_with_its_wallet(wallet: LocalAccount) -> None:
    Profile.objects.create(user=_user("gone", is_active=False), wallet_address=wallet.address.lower())
    browser = Client()
    refused = _sign_in(browser, wallet)
    assert refused.status_code == 403
    assert _logged_in(browser) is None


def test_a_redirect_to_another_site_is_not_followed(wallet: LocalAccount) -> None:
    assert _sign_in(Client(), wallet, next="https://evil.example/").json()["redirect"] == "/jobs/"


def test_a_message_for_a_non_address_is_refused_and_stores_no_nonce() -> None:
    browser = Client()
    assert browser.get(f"{MESSAGE_URL}?address=nope").status_code == 400
    assert not SiweNonce.objects.exists()
    assert browser.get(LOGIN_URL).status_code == 405
