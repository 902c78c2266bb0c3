"""Result metrics are node-supplied figures that the dashboard computes with (the network's measured render speed
for ETAs): a stored record with a string where a number belongs must not turn into a huge string or an exception
(the upload API refuses such metrics now; records from before that, or written by hand, remain possible)."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from marketplace.jobs.models import AssignmentState, Result
from marketplace.web.selectors import render_seconds_per_work
from tests.factories import AssignmentFactory, JobFactory, TaskFactory

pytestmark = pytest.mark.django_db
SPEC = {"output": {"resolution": [128, 128], "samples": 16}}


def _accepted(metrics: object) -> None:
    job = JobFactory(kind="render")
    task = TaskFactory(job=job, payload={"spec": SPEC, "start": 0, "count": 4})
    assignment = AssignmentFactory(task=task, state=AssignmentState.ACCEPTED)
    result = Result(assignment=assignment, sha256="0" * 64, size=1, signature="0x" + "1" * 130, metrics=metrics)
    result.artifact.save("a.zip", ContentFile(b"x"), save=False)
    result.save()


def test_a_stored_string_where_a_figure_belongs_counts_as_nothing_and_honest_figures_still_count() -> None:
    _accepted({"images": "x" * 200, "seconds": 1})  # "x" * 200 * 128 * 128 * 16: 52 MB of string, once
    _accepted({"images": 4, "seconds": "soon"})
    _accepted(["not", "an", "object"])
    assert render_seconds_per_work() == []
    _accepted({"images": 4, "seconds": 2.0})
    assert render_seconds_per_work() == [pytest.approx(2.0 / (4 * 128 * 128 * 16))]
