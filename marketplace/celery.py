"""The marketplace's Celery app: internal queues for scheduling, verification and settlement."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def use_broker(url: str) -> None:
    """Point this process's Celery app at `url` (the demo does so after starting the embedded Redis)."""
    app.conf.broker_url = url
