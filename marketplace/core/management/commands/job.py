"""`python manage.py job fund-dev JOB_ID`: operator helpers for jobs."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.core.exceptions import ApplicationError
from marketplace.jobs import services
from marketplace.jobs.models import Job


class Command(BaseCommand):
    help = "Job helpers. fund-dev JOB_ID: mark a draft job funded without a chain (dev installs) and split it."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        fund = sub.add_parser("fund-dev", help="mark a draft job funded without a chain and split it into tasks")
        fund.add_argument("job_id", help="the job's id (a UUID)")

    def handle(self, *args: Any, action: str, job_id: str, **options: Any) -> None:
        try:
            parsed = uuid.UUID(job_id)
        except ValueError:
            raise CommandError(f"JOB_ID {job_id!r} is not a job id (a UUID).") from None
        job = Job.objects.filter(id=parsed).select_related("poster").first()
        if job is None:
            raise CommandError(f"No job {job_id}.")
        staff = get_user_model()(username="manage.py", is_staff=True)
        try:
            services.job_fund_dev(job_id=job.id, actor=staff)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Job {job.id} is funded; the marketplace worker splits it into {job.task_count} tasks.")
