"""`python -m nodeagent` is the `nodeagent` command."""

from __future__ import annotations

from nodeagent.cli import entry

entry()
