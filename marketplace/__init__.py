"""The Hashwork marketplace: a Django project that splits jobs into tasks and leases them to volunteer nodes."""

from __future__ import annotations

from marketplace.celery import app as celery_app

__all__ = ["celery_app"]
