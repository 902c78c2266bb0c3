"""The dashboard's browser-wallet flows in Chromium against a real Anvil chain: linking a wallet by Sign-In with
Ethereum, and "Fund with wallet" (approve + fund through EIP-1193 and ethers.js), which the marketplace's chain
reader then sees. The wallet is the only stand-in: an EIP-1193 provider injected into the page that forwards every
request to Anvil, whose development accounts are unlocked (Anvil signs), as a browser extension would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from playwright.sync_api import Browser, expect

from contracts import devchain
from tests.e2e.browser import browser, shot
from tests.e2e.stack import Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow
__all__ = ["browser"]  # the fixture, used by name

# window.ethereum, forwarding to Anvil; eth_requestAccounts answers with one development account.
WALLET = """
window.ethereum = {
  isHashworkTestWallet: true,
  async request({method, params}) {
    if (method === "eth_requestAccounts" || method === "eth_accounts") return ["%(account)s"];
    const reply = await fetch("%(rpc)s", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({jsonrpc: "2.0", id: Date.now(), method, params: params || []})});
    const body = await reply.json();
    if (body.error) throw Object.assign(new Error(body.error.message), body.error);
    return body.result;
  },
  on() {}, removeListener() {},
};
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path, chain=True, HASHWORK_DEV_FUNDING="false").start()
    try:
        yield running
    finally:
        running.stop()


def test_a_poster_links_a_wallet_by_signing_and_funds_a_job_from_it(stack: Stack, browser: Browser) -> None:
    wallet = Account.from_key(devchain.dev_keys(4)[3]).address
    stack.manage("chain", "faucet", wallet, "50")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.add_init_script(WALLET % {"account": wallet, "rpc": stack.env["ETH_RPC_URL"]})
    page.goto(f"{stack.url}/accounts/signup/")
    page.get_by_label("Username").fill("wallet-wendy")
    page.get_by_label("Password", exact=True).fill("a-long-Passphrase-9")
    page.get_by_label("Password confirmation").fill("a-long-Passphrase-9")
    page.get_by_role("button", name="Sign up").click()

    page.get_by_role("link", name="wallet-wendy").click()
    page.get_by_role("button", name="Link a wallet").click()
    expect(page.locator("#wallet-status")).to_contain_text(f"Linked {wallet.lower()}")
    shot(page, "profile-wallet")

    page.get_by_role("link", name="Post a job").click()
    page.get_by_label("Images", exact=True).fill("4")
    page.get_by_label("Resolution (square, pixels)").fill("64")
    page.get_by_label("Replication").fill("1")
    page.get_by_role("button", name="Post the job").click()
    expect(page.get_by_text("Fund this job")).to_be_visible()
    # On a chain, dev funding is off here (HASHWORK_DEV_FUNDING=false) but the chain is local: both buttons show.
    page.get_by_role("button", name="Fund with wallet").click()
    expect(page.locator("#fund-status")).to_contain_text("Funded (tx 0x", timeout=60_000)
    shot(page, "funded-with-wallet")
    # The chain reader sees the deposit and the job starts (no agents here: it waits for nodes).
    expect(page.locator("#job-state")).to_have_text("running", timeout=60_000)

    # Cancelled before any node took it: the marketplace closes the escrow, and the poster takes it all back.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state")).to_have_text("cancelled")

    def refundable() -> bool:
        page.reload()
        return page.get_by_role("button", name="Refund with wallet").count() == 1

    wait_for(refundable, timeout=90, what="the escrow to be closed for the refund", interval=2)
    expect(page.get_by_text("0.1025 HWC of this job's deposit were not spent")).to_be_visible()
    page.get_by_role("button", name="Refund with wallet").click()
    expect(page.locator("#refund-status")).to_contain_text("Refunded (tx 0x", timeout=60_000)
    shot(page, "refunded-with-wallet")


def test_an_operator_sees_the_earnings_and_withdraws_them_from_the_dashboard(stack: Stack, browser: Browser) -> None:
    import json

    from web3 import Web3

    from contracts.bindings import JobEscrow

    miner = stack.agent("miner")
    job_id = stack.post_job({"tasks": 3, "matrix_size": 32, "seed": 8}, replication=1, on_chain_extra="0")
    stack.wait_job(job_id)
    wallet = Web3.to_checksum_address(json.loads(miner.config.read_text())["wallet_address"])
    escrow = JobEscrow(stack.w3(), stack.deployment().escrow)
    wait_for(lambda: escrow.credit_of(wallet) == 3 * 10**18, timeout=60, what="the three payouts to settle")
    stack.manage("chain", "faucet", wallet, "0.000001", "--eth", "1")  # gas money for the node's own transaction
    stack.manage(
        "shell", "-c",
        "from django.contrib.auth import get_user_model as g; u = g().objects.get(username='operator'); "
        "u.set_password('op-Passphrase-9'); u.save()",
    )  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(f"{stack.url}/accounts/login/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill("op-Passphrase-9")
    page.get_by_label("Password").press("Enter")  # the keyboard is enough
    page.get_by_role("link", name="My nodes").click()
    row = page.locator("tbody").first.locator("tr", has_text="miner")
    expect(row).to_contain_text("3 HWC")  # settled, and withdrawable on chain
    shot(page, "operator-earnings")
    row.get_by_role("button", name="Withdraw").click()
    expect(page.get_by_text("will withdraw its credit")).to_be_visible()

    def withdrawn() -> bool:
        return escrow.credit_of(wallet) == 0

    wait_for(withdrawn, timeout=60, what="the agent to withdraw at its heartbeat")
    page.reload()
    expect(page.locator("tbody").first.get_by_role("button", name="Withdraw")).to_have_count(0)
    shot(page, "operator-withdrawn")
