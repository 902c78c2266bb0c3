"""App config for marketplace.payments."""

from __future__ import annotations

from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "marketplace.payments"
    label = "payments"
