"""Solidity escrow and token contracts with their Python bindings (added by the contracts issue)."""
