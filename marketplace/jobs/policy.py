"""Pure rules of verification and leasing that the network simulator (bench/netsim.py) runs as the marketplace does."""

from __future__ import annotations

from django.conf import settings

# jobs.verification (`_quorum`, the MAX_EXTRA_REPLICAS limit in `_apply`) and jobs.dispatch (`_attempt_lost`'s
# JOB_NODE_MAX_FAILURES block) call these, so the simulator and the marketplace share one definition.


def quorum(replication: int) -> int:
    """How many agreeing replicas accept a task of a job with `replication`: two, or all of them when fewer."""
    return min(2, replication)


def replicas_exhausted(replicas_wanted: int, replication: int) -> bool:
    """Whether a task whose replicas still disagree may ask for no more: it wants replication + MAX_EXTRA_REPLICAS
    already, so it fails instead."""
    return replicas_wanted >= replication + int(settings.HASHWORK["MAX_EXTRA_REPLICAS"])


def node_blocked_after(failures: int) -> bool:
    """Whether a node that lost (let expire, or failed) `failures` attempts on one job gets none of it again."""
    return failures >= int(settings.HASHWORK["JOB_NODE_MAX_FAILURES"])
