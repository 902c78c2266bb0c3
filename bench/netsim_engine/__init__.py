"""A discrete-event simulator of a volunteer network running the marketplace's own policies (bench/netsim.py)."""

from __future__ import annotations

import os

import django
from django.apps import apps

# The policies are the marketplace's code, which reads Django settings (no database is touched).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
if not apps.ready:
    django.setup()
