"""The dashboard's own data: a user's wallet, linked by Sign-In with Ethereum (never just typed in)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    wallet_address = models.CharField(
        max_length=42, null=True, blank=True, unique=True, help_text="Lower-case 0x-address, proven by a signature."
    )
    wallet_linked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"profile of {self.user}"
