"""Celery tasks for money: the chain reader (beat) and the settlement worker (its own queue, concurrency 1)."""

from __future__ import annotations

import logging

import requests
from celery import shared_task
from web3.exceptions import Web3Exception

from contracts.errors import TransactionTimeout
from marketplace.core.queues import TIME_LIMITS, Queue, TaskName
from marketplace.payments import chain, services

logger = logging.getLogger(__name__)

# A chain node that is down, slow or restarting makes money wait, never fail: these are retried.
CHAIN_UNAVAILABLE = (
    chain.ChainUnavailable,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    TransactionTimeout,
)


@shared_task(name=TaskName.CHAIN_SYNC.value, acks_late=True, **TIME_LIMITS[Queue.CHAIN])
def chain_sync_task() -> int:
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
        report = services.chain_sync(
            w3=w3, escrow=chain.escrow(w3), chain_id=dep.chain_id, start_block=dep.block_number
        )
    except chain.ChainNotConfigured:
        return 0
    except (*CHAIN_UNAVAILABLE, Web3Exception) as exc:
        logger.warning("chain not reachable, deposits wait: %s", exc)
        return 0
    if report.deposits or report.funded_jobs:
        logger.info("chain sync: %d deposits, jobs funded: %s", report.deposits, report.funded_jobs)
    return report.deposits


@shared_task(
    name=TaskName.SETTLE.value,
    acks_late=True,
    **TIME_LIMITS[Queue.SETTLEMENT],
    autoretry_for=CHAIN_UNAVAILABLE,
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=None,
)
def settle_task() -> int:
    """Pay pending payouts and close finished jobs. Runs only on the settlement queue, one at a time."""
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
    except chain.ChainNotConfigured:
        return 0
    escrow = chain.escrow(w3, signed=True)
    report = services.payouts_settle(w3=w3, escrow=escrow, from_block=dep.block_number)
    services.jobs_close(escrow=escrow)
    return report.settled + report.recovered
