"""How long a kind's leases last: the start window, the lease a heartbeat renews, and the bound no renewal passes."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from marketplace.jobs import kinds


def lease_windows(kind_name: str) -> tuple[int, int]:
    """(start window, lease) in seconds for a kind, with the settings' overrides applied."""
    kind = kinds.get(kind_name)
    start = settings.HASHWORK["START_WINDOW_SECONDS"] or kind.start_window_seconds
    lease = settings.HASHWORK["LEASE_SECONDS"] or kind.lease_seconds
    return start, lease


def lease_margin(time_limit: int) -> int:
    """What a running lease may outlast the kind's time limit by (the result's upload): max(60 s, 10 %)."""
    return max(60, time_limit // 10)


def lease_bound(kind_name: str, started_at: datetime) -> datetime:
    """The latest a running assignment's lease may reach: its start + the kind's time limit (what the agent is
    told, and kills its runner at) + `lease_margin`. A node that keeps heartbeating past it loses the assignment
    all the same: the time limit holds even against an agent that ignores it."""
    return started_at + timedelta(seconds=lease_bound_seconds(kind_name))


def lease_bound_seconds(kind_name: str) -> int:
    """How long after its start a running assignment of the kind may hold its lease at most (see `lease_bound`)."""
    limit = kinds.get(kind_name).time_limit_seconds
    return limit + lease_margin(limit)
