// Hardhat Network as a second local chain for Hashwork (`contracts/devchain.py` starts it with
// `start(engine="hardhat")`). Only the node is used: the contracts are compiled by `python -m contracts.compile`
// and deployed from the committed artifacts, so Hardhat's own compile paths point away from the sources.
"use strict";

module.exports = {
  // Never compiled by Hardhat (see above); named so a stray `npx hardhat compile` uses the project's compiler.
  solidity: { version: "0.8.37", settings: { evmVersion: "prague", viaIR: true } },
  paths: {
    sources: "./contracts/src",
    cache: "./var/hardhat/cache",
    artifacts: "./var/hardhat/artifacts",
  },
  networks: {
    hardhat: {
      // Transient storage (EIP-1153, OpenZeppelin's ReentrancyGuardTransient) and the artifacts' evmVersion.
      hardfork: "prague",
      chainId: Number(process.env.HASHWORK_HARDHAT_CHAIN_ID || 31337),
      // Anvil's development accounts (contracts.devchain.DEV_MNEMONIC): the same keys on either chain.
      accounts: {
        mnemonic: "test test test test test test test test test test test junk",
        count: 10,
        accountsBalance: "10000000000000000000000",
      },
    },
  },
};
