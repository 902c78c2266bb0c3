"""The dashboard in a real browser (Debian's Chromium through Playwright) against a live marketplace with real node
agents: a poster signs up, posts a render job, funds it from the dev account, watches it reach 100 %, sees the
gallery and downloads the dataset; posts a train job on it and sees the curve; the node operator sees earnings.
Screenshots of each page go to var/screenshots/ (look at them)."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.browser import browser, shot
from tests.e2e.stack import Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow
__all__ = ["browser"]  # the fixture, used by name


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path, HASHWORK_LEASE_SECONDS="120", HASHWORK_START_WINDOW_SECONDS="60").start()
    try:
        yield running
    finally:
        running.stop()


def test_a_poster_renders_a_dataset_and_trains_on_it_and_the_operator_sees_earnings(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    # One operator runs both rigs (their jobs here are replication 1, so the one-operator-per-replica rule holds).
    agents = [stack.agent("rig-a"), stack.agent("rig-b", operator="operator")]
    wait_for(lambda: all(a.me()["is_online"] for a in agents), timeout=60, what="both agents online")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(f"{stack.url}/network/")
    expect(page.locator("#nodes-online")).to_have_text("2")
    shot(page, "network")

    # Sign up, with one mistake first: the error sits next to its field.
    page.get_by_role("link", name="Sign up").first.click()
    page.get_by_label("Username").fill("poster-pat")
    page.get_by_label("Password", exact=True).fill("a-long-Passphrase-9")
    page.get_by_label("Password confirmation").fill("something else")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#id_password2-errors")).to_be_visible()
    page.get_by_label("Password", exact=True).fill("a-long-Passphrase-9")
    page.get_by_label("Password confirmation").fill("a-long-Passphrase-9")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    shot(page, "jobs-empty")

    # Post a small render job; the quote follows the form.
    page.get_by_role("link", name="Post your first render job").click()
    page.get_by_label("Images", exact=True).fill("8")
    page.get_by_label("Resolution (square, pixels)").fill("64")
    page.get_by_label("Cycles samples").fill("4")
    page.get_by_label("Replication").fill("1")
    expect(page.locator("#quote")).to_contain_text("2 tasks × 1 replica(s)")
    shot(page, "post-render")
    page.get_by_role("button", name="Post the job").click()
    expect(page.get_by_text("Fund this job")).to_be_visible()
    page.get_by_role("button", name="Fund from dev account").click()
    expect(page.locator("#job-progress")).to_have_text("100 %", timeout=240_000)
    expect(page.locator("#job-state")).to_have_text("completed")
    expect(page.locator(".gallery img").first).to_be_visible(timeout=120_000)
    shot(page, "render-job")
    with page.expect_download() as download:
        page.locator("#download").click()
    dataset = tmp_path / "dataset.zip"
    download.value.save_as(dataset)
    with zipfile.ZipFile(dataset) as archive:
        assert "annotations.json" in archive.namelist()

    # A train job on that dataset: the curve appears round by round.
    page.get_by_role("link", name="Post a job").click()
    page.get_by_role("link", name="Train job").click()
    page.get_by_label("Dataset").select_option(index=1)
    page.get_by_label("Crop size (pixels)").fill("16")
    page.get_by_label("Rounds").fill("2")
    page.get_by_label("Local steps").fill("20")
    expect(page.locator("#quote")).to_contain_text("4 tasks × 1 replica(s)")
    shot(page, "post-train")
    page.get_by_role("button", name="Post the job").click()
    page.get_by_role("button", name="Fund from dev account").click()
    expect(page.locator("#job-state")).to_have_text("completed", timeout=240_000)
    expect(page.locator("#curve")).to_be_visible()
    shot(page, "train-job")
    assert re.search(r"model\.safetensors", page.content())

    # The node operator (the stack's operator user) sees the two nodes and what they earned.
    operator = browser.new_page(viewport={"width": 1280, "height": 900})
    operator.goto(f"{stack.url}/network/")
    set_password = (
        "from django.contrib.auth import get_user_model as g; "
        "u = g().objects.get(username='operator'); u.set_password('op-Passphrase-9'); u.save()"
    )
    stack.manage("shell", "-c", set_password)
    operator.get_by_role("link", name="Log in").first.click()
    operator.get_by_label("Username").fill("operator")
    operator.get_by_label("Password").fill("op-Passphrase-9")
    operator.get_by_role("button", name="Log in").click()
    operator.get_by_role("link", name="My nodes").click()
    expect(operator.locator("strong", has_text="rig-a")).to_be_visible()
    expect(operator.locator("strong", has_text="rig-b")).to_be_visible()
    # Every accepted replica and update was paid to one of them: the payments table lists them.
    expect(operator.locator("tbody").nth(1).locator("tr")).to_have_count(6)
    expect(operator.locator("#enrol-command")).to_contain_text("nodeagent enroll --marketplace")
    shot(operator, "my-nodes")
