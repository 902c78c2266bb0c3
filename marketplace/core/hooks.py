"""The one place where a lower app tells a higher one that something happened (dependencies point one way:
core ← nodes ← jobs ← federated, payments ← wiring). A hook is declared here with its signature; the higher app
connects its receiver in its AppConfig.ready(); the lower app sends. Receivers run synchronously, inside the
sender's transaction, so what they write commits or rolls back with the event itself."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, ParamSpec
from uuid import UUID

logger = logging.getLogger(__name__)

P = ParamSpec("P")


class Hook(Generic[P]):
    """A named event with a fixed signature and the receivers connected to it, in connection order."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc
        self._receivers: list[Callable[P, None]] = []

    def connect(self, receiver: Callable[P, None]) -> Callable[P, None]:
        """Add a receiver (idempotent: Django may call ready() twice in tests)."""
        if receiver not in self._receivers:
            self._receivers.append(receiver)
        return receiver

    def send(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for receiver in self._receivers:
            receiver(*args, **kwargs)

    @property
    def receivers(self) -> tuple[Callable[P, None], ...]:
        return tuple(self._receivers)

    def __repr__(self) -> str:
        return f"Hook({self.name!r}, {len(self._receivers)} receivers)"


# jobs → payments: an assignment was accepted; its payout is created in the same transaction, so accepted work
# always has its payout and nothing else does.
assignment_accepted: Hook[[UUID]] = Hook(
    "assignment_accepted", "An assignment was accepted (sent inside the accepting transaction)."
)
# nodes → jobs: a node was removed or banned; its open assignments go back to the pool.
node_deactivated: Hook[[UUID]] = Hook(
    "node_deactivated", "A node was deactivated (sent inside the deactivating transaction)."
)

ALL: tuple[Hook[[UUID]], ...] = (assignment_accepted, node_deactivated)


class Source(Generic[P]):
    """A value a lower app asks a higher one for (the higher app provides it in its AppConfig.ready())."""

    def __init__(self, name: str, default: Callable[[], list[str]]) -> None:
        self.name = name
        self._provider = default

    def provide(self, provider: Callable[[], list[str]]) -> None:
        self._provider = provider

    def __call__(self) -> list[str]:
        return self._provider()


# nodes ← jobs: the job kinds a node may set a minimum price for (jobs knows the kinds; nodes validates prices).
job_kind_names: Source[[]] = Source("job_kind_names", list)
