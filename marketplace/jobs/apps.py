"""App config for marketplace.jobs: registers the replicated kinds and connects the jobs app's hooks."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "marketplace.jobs"
    label = "jobs"

    def ready(self) -> None:
        from marketplace.core import hooks
        from marketplace.jobs import kinds
        from marketplace.jobs.dispatch import node_work_release
        from marketplace.jobs.kinds.benchmark import BenchmarkKind
        from marketplace.jobs.kinds.render import RenderKind

        kinds.register(BenchmarkKind())
        kinds.register(RenderKind())
        hooks.job_kind_names.provide(kinds.names)
        hooks.node_deactivated.connect(node_work_release)
