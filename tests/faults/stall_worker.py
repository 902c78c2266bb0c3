"""Imported only by the Celery worker that tests/faults/test_lost_work.py starts (`--include`): its verification
never finishes (as one stuck on a memory bomb would), so that the test can kill the worker in the middle of it."""

from __future__ import annotations

import time
from typing import Any

from marketplace.jobs import verification


def _stuck(**kwargs: Any) -> str:
    time.sleep(600)
    raise AssertionError("the test kills this worker long before")


verification.task_verify = _stuck
