"""App config for marketplace.payments: accepted work gets its payout through the jobs app's hook."""

from __future__ import annotations

from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "marketplace.payments"
    label = "payments"

    def ready(self) -> None:
        from marketplace.core import hooks
        from marketplace.payments.services import payout_on_accept

        hooks.assignment_accepted.connect(payout_on_accept)
