"""App config for marketplace.web: the dashboard for job posters and node operators."""

from __future__ import annotations

from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "marketplace.web"
    label = "web"
