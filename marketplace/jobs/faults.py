"""Whose fault an error during verification is: the marketplace's own (its database, its disk, its re-render, its
time limit: nobody is judged, the verify run is retried) or the replica's (anything else its data made happen:
that replica is rejected as malformed)."""

from __future__ import annotations

import errno

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError

# OSErrors that say the marketplace ran short (disk, quota, descriptors, I/O), whatever file it was writing.
RESOURCE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


class VerifierUnavailable(Exception):
    """The marketplace could not judge a replica for a reason of its own (its spot-check re-render failed): no
    replica is at fault, and the verdict waits for the next verify run."""


def is_ours(exc: BaseException) -> bool:
    """Whether `exc` is the marketplace's own trouble rather than something a replica's data caused. A MemoryError
    is the replica's: with every decoder bounded, only a hostile input asks for an allocation that big."""
    if isinstance(exc, OSError):
        return exc.errno in RESOURCE_ERRNOS
    return isinstance(exc, OperationalError | InterfaceError | SoftTimeLimitExceeded | VerifierUnavailable)
