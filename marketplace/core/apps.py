"""App config for marketplace.core (hosts the demo command)."""

from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "marketplace.core"
    label = "core"
