"""Writes of the jobs app, by topic: jobs (post, fund, split, cancel, expire, complete), assignments (what node
agents report: heartbeat, start, result, hand back, fail) and outputs (uploaded assets, merged datasets). Every
state change is a conditional UPDATE (jobs.transitions, jobs.dispatch)."""

from __future__ import annotations

from marketplace.jobs.services.assignments import (
    Heartbeat,
    assignment_fail,
    assignment_release,
    assignment_start,
    node_heartbeat,
    result_submit,
)
from marketplace.jobs.services.jobs import (
    MAX_REPLICATION,
    job_cancel,
    job_complete_if_done,
    job_create,
    job_fund_dev,
    job_mark_funded,
    job_missing_assets,
    job_split,
    job_stranded_settle,
    jobs_expire,
    quote_compute,
)
from marketplace.jobs.services.outputs import job_asset_upload, job_output_build
from marketplace.jobs.transitions import job_transition

__all__ = [
    "MAX_REPLICATION",
    "Heartbeat",
    "assignment_fail",
    "assignment_release",
    "assignment_start",
    "job_asset_upload",
    "job_cancel",
    "job_complete_if_done",
    "job_create",
    "job_fund_dev",
    "job_mark_funded",
    "job_missing_assets",
    "job_output_build",
    "job_split",
    "job_stranded_settle",
    "job_transition",
    "jobs_expire",
    "node_heartbeat",
    "quote_compute",
    "result_submit",
]
