"""The dashboard's pages with Django's test client, on the real database (the browser tests are in tests/e2e)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from eth_account import Account
from eth_account.messages import encode_defunct

from marketplace.jobs.models import Job, JobState
from marketplace.web.models import Profile
from tests.conftest import make_node
from tests.factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser() -> Client:
    return Client()


@pytest.fixture
def alice(browser: Client) -> Any:
    user = UserFactory(username="alice")
    browser.force_login(user)
    return user


def test_anonymous_visitors_see_the_network_and_are_sent_to_log_in_elsewhere(browser: Client) -> None:
    page = browser.get("/network/")
    assert page.status_code == 200
    assert b"Nodes online" in page.content
    assert browser.get("/").url == "/network/"
    response = browser.get("/jobs/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_signing_up_logs_in_and_bad_input_is_named_next_to_its_field(browser: Client) -> None:
    bad = browser.post("/accounts/signup/", {"username": "bob", "password1": "x", "password2": "y"})
    assert bad.status_code == 200
    assert b'id="id_password2-errors"' in bad.content
    assert not get_user_model().objects.filter(username="bob").exists()
    good = browser.post(
        "/accounts/signup/", {"username": "bob", "password1": "a-long-Passphrase-9", "password2": "a-long-Passphrase-9"}
    )
    assert good.status_code == 302
    assert browser.get("/jobs/").status_code == 200
    assert b"No jobs yet" in browser.get("/jobs/").content


RENDER_FORM = {
    "products": ["cereal", "water", "soda"],
    "scene": "shelf",
    "images": "8",
    "chunk_size": "4",
    "resolution": "64",
    "samples": "4",
    "seed": "1",
    "replication": "2",
    "price": "0.5",
}


def test_posting_a_render_job_from_the_form_makes_the_same_job_as_the_api(browser: Client, alice: Any) -> None:
    quote = browser.post("/jobs/quote/render/", RENDER_FORM)
    assert b"2 tasks \xc3\x97 2 replica(s) \xc3\x97 0.5 HWC = 2 HWC" in quote.content
    response = browser.post("/jobs/new/render/", RENDER_FORM)
    assert response.status_code == 302
    job = Job.objects.get(poster=alice)
    assert (job.kind, job.task_count, job.replication, job.quote) == ("render", 2, 2, 2 * 10**18)
    assert [c["category"] for c in job.spec["catalog"]] == ["cereal", "water", "soda"]
    page = browser.get(response.url)
    assert b"Fund this job" in page.content
    assert b"draft" in page.content


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"images": "0"}, "images", b"greater than or equal to 1"),
        ({"products": []}, "products", b"required"),
        ({"price": "abc"}, "price", b"Enter a number"),
    ],
)
def test_a_bad_render_form_shows_the_error_at_its_field_and_posts_nothing(
    browser: Client, alice: Any, change: dict[str, Any], field: str, words: bytes
) -> None:
    response = browser.post("/jobs/new/render/", {**RENDER_FORM, **change})
    assert response.status_code == 200
    errors = response.content.split(f'id="id_{field}'.encode(), 1)[-1]
    assert words in errors
    assert not Job.objects.exists()


def test_the_train_form_offers_only_my_completed_render_jobs(browser: Client, alice: Any) -> None:
    page = browser.get("/jobs/new/train/")
    assert b"you have none yet" in page.content
    mine = JobFactory(poster=alice, kind="render", state=JobState.COMPLETED, finished_at="2026-11-20T10:00Z")
    JobFactory(kind="render", state=JobState.COMPLETED, finished_at="2026-11-20T10:00Z")  # someone else's
    page = browser.get("/jobs/new/train/")
    dataset = page.content.split(b'name="dataset"', 1)[1].split(b"</select>", 1)[0]
    assert dataset.count(b'<option value="') == 2  # "---------" and mine
    assert str(mine.id).encode() in dataset
    assert b"you have none yet" not in page.content


def test_dev_funding_from_the_job_page_starts_the_job(browser: Client, alice: Any, settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "DEV_FUNDING": True}
    settings.ETH_RPC_URL = ""
    browser.post("/jobs/new/render/", RENDER_FORM)
    job = Job.objects.get(poster=alice)
    response = browser.post(f"/jobs/{job.id}/fund-dev/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state in {JobState.FUNDED, JobState.RUNNING}
    live = browser.get(f"/jobs/{job.id}/live/")
    assert live.status_code == 200
    assert b"Tasks:" in live.content


def test_another_posters_job_is_not_found(browser: Client, alice: Any) -> None:
    theirs = JobFactory()
    assert browser.get(f"/jobs/{theirs.id}/").status_code == 404
    assert browser.get(f"/jobs/{theirs.id}/live/").status_code == 404
    assert browser.post(f"/jobs/{theirs.id}/fund-dev/").status_code == 404


def test_my_nodes_page_lists_my_nodes_and_the_enrolment_command(browser: Client, alice: Any) -> None:
    make_node(alice, name="garage-rig", capabilities={"cpu_cores": 8, "ram_mb": 32000, "gpus": []})
    make_node(UserFactory(username="eve"), name="eves-rig")
    page = browser.get("/nodes/")
    assert b"garage-rig" in page.content
    assert b"eves-rig" not in page.content
    assert b"nodeagent enroll --marketplace http://testserver --token " in page.content


def _sign(browser: Client, account: Any) -> Any:
    message = browser.get(f"/accounts/siwe/message/?address={account.address}&chain_id=31337").json()["message"]
    signature = account.sign_message(encode_defunct(text=message)).signature.hex()
    return browser.post(
        "/accounts/siwe/verify/",
        json.dumps({"message": message, "signature": "0x" + signature.removeprefix("0x")}),
        content_type="application/json",
    )


def test_a_wallet_is_linked_only_by_its_signature(browser: Client, alice: Any) -> None:
    account = Account.create()
    response = _sign(browser, account)
    assert response.status_code == 200, response.json()
    assert Profile.objects.get(user=alice).wallet_address == account.address.lower()
    assert account.address.lower().encode() in browser.get("/accounts/profile/").content
    # The nonce was used: the same signed message again is refused.
    message = browser.get(f"/accounts/siwe/message/?address={account.address}").json()["message"]
    other = Account.create()
    forged = other.sign_message(encode_defunct(text=message)).signature.hex()
    refused = browser.post(
        "/accounts/siwe/verify/",
        json.dumps({"message": message, "signature": "0x" + forged.removeprefix("0x")}),
        content_type="application/json",
    )
    assert refused.status_code == 400
    assert "not made by the address" in refused.json()["error"]
    assert Profile.objects.get(user=alice).wallet_address == account.address.lower()


def test_a_wallet_linked_to_someone_else_is_refused(browser: Client, alice: Any) -> None:
    account = Account.create()
    Profile.objects.create(user=UserFactory(username="mallory"), wallet_address=account.address.lower())
    response = _sign(browser, account)
    assert response.status_code == 409
    assert not Profile.objects.filter(user=alice, wallet_address__isnull=False).exists()


def test_a_message_for_another_site_or_without_a_session_nonce_is_refused(browser: Client, alice: Any) -> None:
    account = Account.create()
    message = browser.get(f"/accounts/siwe/message/?address={account.address}").json()["message"]
    moved = message.replace("testserver wants you", "evil.example wants you")
    signature = account.sign_message(encode_defunct(text=moved)).signature.hex()
    response = browser.post(
        "/accounts/siwe/verify/",
        json.dumps({"message": moved, "signature": "0x" + signature.removeprefix("0x")}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "evil.example" in response.json()["error"]
    assert browser.get("/accounts/siwe/message/?address=nope").status_code == 400


def test_a_withdrawal_asked_on_the_dashboard_reaches_the_node_once_by_its_heartbeat(
    browser: Client, alice: Any
) -> None:
    mine = make_node(alice, name="garage-rig")
    theirs = make_node(UserFactory(username="eve"), name="eves-rig")
    assert browser.post(f"/nodes/{theirs.node.id}/withdraw/").status_code == 404
    response = browser.post(f"/nodes/{mine.node.id}/withdraw/")
    assert response.status_code == 302
    beats = [mine.client.post("/api/nodes/heartbeat/", {"free_slots": 0}, format="json").json() for _ in range(2)]
    assert [b["withdraw"] for b in beats] == [True, False]
    assert theirs.client.post("/api/nodes/heartbeat/", {"free_slots": 0}, format="json").json()["withdraw"] is False
