"""App config for marketplace.federated: the rounds of train jobs; registers the train kind."""

from __future__ import annotations

from django.apps import AppConfig


class FederatedConfig(AppConfig):
    name = "marketplace.federated"
    label = "federated"

    def ready(self) -> None:
        from marketplace.federated.kind import TrainKind
        from marketplace.jobs import kinds

        kinds.register(TrainKind())
