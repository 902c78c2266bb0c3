"""Admin for jobs, tasks, assignments and results; dev funding as an action for staff."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.core.exceptions import ApplicationError
from marketplace.jobs import services
from marketplace.jobs.models import Assignment, Job, Result, Task


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "kind", "poster", "state", "task_count", "replication", "quote", "created_at"]
    list_filter = ["state", "kind"]
    search_fields = ["id", "poster__username"]
    readonly_fields = ["quote", "task_count", "created_at", "updated_at", "funded_at", "finished_at"]
    actions = ["fund_dev"]

    @admin.action(description="Mark funded (dev, no chain) and split into tasks")
    def fund_dev(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            try:
                services.job_fund_dev(job_id=job.id, actor=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{job.id}: {exc.message}", messages.ERROR)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "job", "index", "state"]
    list_filter = ["state"]
    search_fields = ["id", "job__id"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "task", "node", "attempt", "state", "lease_expires_at"]
    list_filter = ["state"]
    search_fields = ["id", "task__job__id", "node__name"]


@admin.register(Result)
class ResultAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "assignment", "sha256", "size", "created_at"]
    search_fields = ["id", "sha256"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
