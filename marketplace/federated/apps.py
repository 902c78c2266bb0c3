"""App config for marketplace.federated: the rounds of train jobs."""

from __future__ import annotations

from django.apps import AppConfig


class FederatedConfig(AppConfig):
    name = "marketplace.federated"
    label = "federated"
