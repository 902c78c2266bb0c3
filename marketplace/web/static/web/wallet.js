// The browser-wallet side of the dashboard (EIP-1193 through ethers.js): signing in, or linking a wallet, by
// signing a Sign-In with Ethereum message, and funding a job (approve + fund on the escrow).
window.Hashwork = (() => {
  function say(el, text, ok) {
    el.textContent = text;
    el.className = "form-text " + (ok === false ? "text-danger" : ok ? "text-success" : "");
  }
  async function provider(el) {
    if (!window.ethereum) {
      say(el, "No browser wallet found: install one (MetaMask, Rabby, …) and reload this page.", false);
      return null;
    }
    const p = new ethers.BrowserProvider(window.ethereum);
    await p.send("eth_requestAccounts", []);
    return p;
  }
  // Sign-In with Ethereum: ask the server for a message for the wallet's address, sign it (personal_sign) and
  // post it back as JSON; the server's answer, or null once `el` says why not.
  async function siwe(messageUrl, verifyUrl, csrf, el, extra) {
    const p = await provider(el);
    if (!p) return null;
    const signer = await p.getSigner();
    const address = await signer.getAddress();
    const network = await p.getNetwork();
    say(el, "Sign the message in your wallet…");
    const m = await fetch(`${messageUrl}?address=${address}&chain_id=${network.chainId}`);
    const body = await m.json();
    if (!m.ok) return say(el, body.error, false), null;
    const signature = await signer.signMessage(body.message);
    const v = await fetch(verifyUrl, {
      method: "POST", headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
      body: JSON.stringify({...extra, message: body.message, signature}),
    });
    const result = await v.json();
    if (!v.ok) return say(el, result.error, false), null;
    return result;
  }
  async function linkWallet(messageUrl, verifyUrl, csrf, el) {
    try {
      const result = await siwe(messageUrl, verifyUrl, csrf, el, {});
      if (!result) return;
      say(el, `Linked ${result.address}.`, true);
      document.getElementById("wallet-address").textContent = result.address;
    } catch (e) {
      say(el, `The wallet refused: ${e.shortMessage || e.message}`, false);
    }
  }
  async function signIn(messageUrl, loginUrl, csrf, next, el) {
    try {
      const result = await siwe(messageUrl, loginUrl, csrf, el, {next});
      if (!result) return;
      say(el, `Signed in as ${result.username}.`, true);
      location.assign(result.redirect);
    } catch (e) {
      say(el, `The wallet refused: ${e.shortMessage || e.message}`, false);
    }
  }
  const ERC20 = ["function approve(address spender, uint256 amount) returns (bool)",
                 "function allowance(address owner, address spender) view returns (uint256)"];
  const ESCROW = ["function fund(bytes32 jobId, uint256 amount, uint64 deadline, uint32 maxPayouts, uint96 maxPayout)"];
  async function fundJob(f, el) {
    try {
      const p = await provider(el);
      if (!p) return;
      const network = await p.getNetwork();
      if (Number(network.chainId) !== Number(f.chainId)) {
        return say(el, `Switch your wallet to chain ${f.chainId} (it is on ${network.chainId}).`, false);
      }
      const signer = await p.getSigner();
      const owner = await signer.getAddress();
      const token = new ethers.Contract(f.token, ERC20, signer);
      const total = BigInt(f.total);
      if ((await token.allowance(owner, f.escrow)) < total) {
        say(el, "Approve the escrow to take the tokens…");
        await (await token.approve(f.escrow, total)).wait();
      }
      say(el, "Fund the job…");
      const escrow = new ethers.Contract(f.escrow, ESCROW, signer);
      // The escrow's job id is bound to the funding wallet (its high 20 bytes): only that wallet can fund it.
      if (!f.escrowId.toLowerCase().startsWith(owner.toLowerCase())) {
        return say(el, `Fund from the wallet this job's escrow id is bound to (${"0x" + f.escrowId.slice(2, 42)}).`, false);
      }
      const tx = await escrow.fund(f.escrowId, total, BigInt(f.deadline), f.maxPayouts, BigInt(f.maxPayout));
      await tx.wait();
      say(el, `Funded (tx ${tx.hash}); the marketplace starts the job when it sees the deposit.`, true);
      setTimeout(() => location.reload(), 2500);
    } catch (e) {
      say(el, `Funding failed: ${e.shortMessage || e.message}`, false);
    }
  }
  async function refundJob(f, el) {
    try {
      const p = await provider(el);
      if (!p) return;
      const network = await p.getNetwork();
      if (Number(network.chainId) !== Number(f.chainId)) {
        return say(el, `Switch your wallet to chain ${f.chainId} (it is on ${network.chainId}).`, false);
      }
      const escrow = new ethers.Contract(f.escrow, ["function refund(bytes32 jobId)"], await p.getSigner());
      say(el, "Confirm the refund in your wallet…");
      const tx = await escrow.refund(f.escrowId);
      await tx.wait();
      say(el, `Refunded (tx ${tx.hash}).`, true);
    } catch (e) {
      say(el, `The refund failed: ${e.shortMessage || e.message}`, false);
    }
  }
  return {linkWallet, signIn, fundJob, refundJob};
})();
