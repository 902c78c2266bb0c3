"""App config for marketplace.nodes."""

from __future__ import annotations

from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "marketplace.nodes"
    label = "nodes"
