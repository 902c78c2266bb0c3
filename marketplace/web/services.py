"""Writes the dashboard makes itself: a user's API token, a wallet linked by its signature, dev funding."""

from __future__ import annotations

import io
import logging
from typing import Any

from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.core.exceptions import ApplicationError, Conflict
from marketplace.jobs import services as job_services
from marketplace.jobs.models import Job, JobState
from marketplace.payments import services as payment_services
from marketplace.web.models import Profile

logger = logging.getLogger(__name__)


class WalletTaken(Conflict):
    """The wallet is linked to another account (a wallet belongs to one account)."""


def api_token_get_or_create(*, user: Any) -> str:
    """The user's REST API token (the dashboard shows it for the API and `nodeagent enroll`)."""
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


@transaction.atomic
def wallet_link(*, user: Any, address: str) -> Profile:
    """Link `address` (already proven by a SIWE signature) to the user, replacing any wallet linked before."""
    if Profile.objects.filter(wallet_address=address).exclude(user=user).exists():
        raise WalletTaken("This wallet is linked to another account.")
    try:
        # A savepoint: the unique constraint still decides a race between two accounts linking the same wallet.
        with transaction.atomic():
            profile, _ = Profile.objects.update_or_create(
                user=user, defaults={"wallet_address": address, "wallet_linked_at": timezone.now()}
            )
    except IntegrityError:
        raise WalletTaken("This wallet is linked to another account.") from None
    logger.info("user %s linked wallet %s", user.pk, address)
    return profile


def job_fund_from_dev_account(*, job: Job, actor: Any, on_local_chain: bool) -> str:
    """Fund a draft job without the poster's wallet; returns what happened, in words. On a local chain a dev
    account funds the escrow (as `chain fund-dev`, so the chain watcher starts the job); without a chain the
    jobs service marks it funded (refused unless dev funding is on or the actor is staff)."""
    if on_local_chain:
        out = io.StringIO()
        call_command("chain", "fund-dev", str(job.id), stdout=out)
        return out.getvalue().strip()
    job_services.job_fund_dev(job_id=job.id, actor=actor)
    return "Funded by the dev service; the job starts in a moment."


def job_escrow_prepare(*, job: Job, user: Any) -> None:
    """Bind a draft job's escrow id to the poster's linked wallet, so the page can offer "Fund with wallet"
    (idempotent; a job already funded from another wallet keeps that one)."""
    profile = Profile.objects.filter(user=user, wallet_address__isnull=False).exclude(wallet_address="").first()
    if job.state != JobState.DRAFT or profile is None:
        return
    try:
        payment_services.escrow_bind(job_id=job.id, wallet=profile.wallet_address)
    except ApplicationError as exc:
        logger.info("job %s keeps its escrow id: %s", job.id, exc.message)
