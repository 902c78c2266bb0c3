"""Money: deposits seen on chain, an append-only ledger, payouts for accepted work, settlement on the escrow."""
