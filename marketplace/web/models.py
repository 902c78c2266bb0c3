"""The dashboard's own data: a user's wallet, linked by Sign-In with Ethereum (never just typed in), and the
one-time nonces those sign-ins use."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    # Unique, and lower-case by a check: one address can never be linked to two accounts, whatever its case.
    wallet_address = models.CharField(
        max_length=42, null=True, blank=True, unique=True, help_text="Lower-case 0x-address, proven by a signature."
    )
    wallet_linked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(wallet_address__isnull=True) | models.Q(wallet_address__regex=r"^0x[0-9a-f]{40}$"),
                name="profile_wallet_address_lower_hex",
            )
        ]

    def __str__(self) -> str:
        return f"profile of {self.user}"


class SiweNonce(models.Model):
    """A nonce the server put in a Sign-In with Ethereum message: good until `expires_at`, and only once."""

    value = models.CharField(max_length=64, unique=True)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"SIWE nonce {self.value[:8]}…"
