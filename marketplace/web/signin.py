"""Sign-In with Ethereum for accounts: the nonces the server issues and consumes, the chain id messages name, and
the account a wallet signs in to (made on its first sign-in)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from web3.exceptions import Web3Exception

from contracts import devchain
from marketplace.core.exceptions import Conflict
from marketplace.payments import chain
from marketplace.web import siwe
from marketplace.web.models import Profile, SiweNonce

logger = logging.getLogger(__name__)

_chain_ids: dict[str, int] = {}
_chain_lock = threading.Lock()


def siwe_chain_id() -> int:
    """The chain this marketplace's wallets sign in for: ETH_RPC_URL's chain (asked once per process), else the
    project's own Anvil (31337). Raises chain.ChainUnavailable when the configured chain does not answer."""
    url = settings.ETH_RPC_URL
    if not url:
        return devchain.ANVIL_CHAIN_ID
    with _chain_lock:
        if url not in _chain_ids:
            try:
                _chain_ids[url] = int(chain.web3().eth.chain_id)
            except (OSError, Web3Exception) as exc:  # the node went away mid-call, or answered with an error
                raise chain.ChainUnavailable(str(exc)) from exc
        return _chain_ids[url]


class AccountDisabled(Conflict):
    """The wallet's account is deactivated: signing in with it is refused."""

    status = 403


# Used nonces are kept this long after they expire, so a late replay is told "used already", not "unknown".
NONCE_KEPT = timedelta(days=1)


def siwe_nonce_issue(*, now: datetime) -> str:
    """A new nonce, stored with its expiry (siwe.MAX_AGE); old ones are swept here, which bounds the table."""
    SiweNonce.objects.filter(expires_at__lt=now - NONCE_KEPT).delete()
    nonce = siwe.new_nonce()
    SiweNonce.objects.create(value=nonce, issued_at=now, expires_at=now + siwe.MAX_AGE)
    return nonce


def siwe_nonce_consume(nonce: str, *, now: datetime) -> None:
    """Mark `nonce` used, once (a siwe.NonceConsumer). The conditional UPDATE decides between two requests that
    bring the same signed message at once: only one of them sees a row count of 1."""
    taken = SiweNonce.objects.filter(value=nonce, used_at__isnull=True, expires_at__gt=now).update(used_at=now)
    if taken == 1:
        return
    row = SiweNonce.objects.filter(value=nonce).first()
    if row is None:
        raise siwe.SiweError("The message's nonce was not issued by this server: start again.")
    if row.used_at is not None:
        raise siwe.SiweError("The message's nonce was used already (a signed message works once): start again.")
    raise siwe.SiweError("The message's nonce has expired: start again.")


def _username_for(address: str) -> str:
    """A free username for a wallet-only account: `wallet-` and the address's first hex digits, longer if taken."""
    users = get_user_model().objects
    hex_digits = address.removeprefix("0x")
    candidates = [f"wallet-{hex_digits[:8]}", f"wallet-{hex_digits}"]
    candidates += (f"wallet-{hex_digits}-{n}" for n in range(2, 100))
    for candidate in candidates:
        if not users.filter(username__iexact=candidate).exists():
            return candidate
    raise Conflict("No free username is left for this wallet.")


def wallet_sign_in(*, address: str) -> tuple[Any, bool]:
    """The user whose linked wallet is `address` (already proven by a SIWE signature), and whether it was made
    now: a first sign-in creates the account (no password) and its profile with the wallet linked."""
    profile = Profile.objects.filter(wallet_address=address).select_related("user").first()
    if profile is None:
        try:
            # One transaction (a savepoint inside the caller's): the unique wallet decides a race between two first
            # sign-ins with the same wallet, and the loser logs into the winner's account.
            with transaction.atomic():
                user = get_user_model().objects.create_user(username=_username_for(address), password=None)
                Profile.objects.create(user=user, wallet_address=address, wallet_linked_at=timezone.now())
        except IntegrityError:
            profile = Profile.objects.filter(wallet_address=address).select_related("user").first()
            if profile is None:  # the username was taken meanwhile, not the wallet
                raise Conflict("Another account was just created with this name: sign in again.") from None
        else:
            logger.info("user %s signed up with wallet %s", user.pk, address)
            return user, True
    if not profile.user.is_active:
        raise AccountDisabled("The account of this wallet is deactivated.")
    return profile.user, False
