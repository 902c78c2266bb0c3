"""Faults and bad input: each test plays one and shows the market carrying on, with nothing lost or half-written."""
