"""Solidity escrow and token contracts with their Python bindings.

`contracts.bindings` (ComputeToken, JobEscrow wrappers), `contracts.deploy` (deploy, Deployment),
`contracts.sender` (one Sender per key), `contracts.errors` (ChainError and the decoded reverts),
`contracts.devchain` (a local Anvil), `contracts.compile` (solc-js, artifacts in contracts/build/).
"""
