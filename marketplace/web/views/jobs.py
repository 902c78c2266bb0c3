"""A poster's job pages: the list, posting with a live quote, the job's page and its live part, funding, cancelling."""

from __future__ import annotations

import logging
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from contracts.units import tokens_format
from marketplace.core.exceptions import ValidationFailed
from marketplace.jobs import services as job_services
from marketplace.web import forms, selectors, services

logger = logging.getLogger(__name__)

FORMS: dict[str, type[forms.JobForm]] = {"render": forms.RenderJobForm, "train": forms.TrainJobForm}


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    return render(request, "web/jobs/list.html", {"rows": selectors.job_rows(poster_id=request.user.pk)})


def _post(request: HttpRequest, form: forms.JobForm, kind: str) -> HttpResponse | None:
    """Create the job from a valid form through the jobs service; field errors land next to their fields."""
    try:
        job = job_services.job_create(
            poster=request.user,
            kind=kind,
            spec=form.spec(),
            price_per_replica=form.price_base_units(),
            replication=form.cleaned_data.get("replication", 1),
        )
    except ValidationFailed as exc:
        for name, problems in exc.fields.items():
            field = forms.field_for(name, form)
            for problem in problems:
                form.add_error(field, problem if field else f"{name}: {problem}")
        return None
    messages.success(request, f"Job posted as a draft; fund it to start (quote {tokens_format(job.quote)} HWC).")
    return redirect("web:job", job_id=job.id)


@login_required
def job_new(request: HttpRequest, kind: str) -> HttpResponse:
    form_class = FORMS.get(kind)
    if form_class is None:
        return redirect("web:job-new", kind="render")
    form = form_class(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        response = _post(request, form, kind)
        if response is not None:
            return response
    return render(request, "web/jobs/new.html", {"form": form, "kind": kind, "quote": form.quote_text()})


@login_required
def job_quote(request: HttpRequest, kind: str) -> HttpResponse:
    """The live quote (htmx): price × tasks × replication plus the escrow's fee, and an estimated duration."""
    form = FORMS[kind](request.POST or None, user=request.user)
    form.is_valid()
    return HttpResponse(form.quote_text())


@login_required
def job_detail(request: HttpRequest, job_id: UUID) -> HttpResponse:
    job = selectors.job_get_for_poster(job_id=job_id, poster=request.user)
    services.job_escrow_prepare(job=job, user=request.user)
    context = selectors.job_page(job=job)
    context["funding"] = selectors.job_funding(job=job)
    context["refund"] = selectors.job_refund(job=job)
    return render(request, "web/jobs/detail.html", context)


@login_required
def job_live(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """The part of the job page that changes (htmx polls it every two seconds while the job is live)."""
    job = selectors.job_get_for_poster(job_id=job_id, poster=request.user)
    return render(request, "web/jobs/_live.html", selectors.job_page(job=job))


@login_required
@require_POST
def job_fund_dev(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """ "Fund from dev account": on a local chain, a dev account funds the escrow (as `chain fund-dev`); without a
    chain, the dev funding service marks it funded."""
    job = selectors.job_get_for_poster(job_id=job_id, poster=request.user)
    local = bool((selectors.job_funding(job=job) or {}).get("local"))
    try:
        messages.success(request, services.job_fund_from_dev_account(job=job, actor=request.user, on_local_chain=local))
    except Exception as exc:  # whatever went wrong, the poster reads it on the page
        logger.warning("dev funding of job %s failed: %s", job.id, exc)
        messages.error(request, f"Could not fund the job from the dev account: {exc}")
    return redirect("web:job", job_id=job.id)


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: UUID) -> HttpResponse:
    job = selectors.job_get_for_poster(job_id=job_id, poster=request.user)
    try:
        job_services.job_cancel(job_id=job.id, poster=request.user)
        messages.success(request, "Job cancelled: open work was revoked; verified work stays paid.")
    except Exception as exc:  # a job that already finished, say: the poster reads why on the page
        messages.error(request, str(exc))
    return redirect("web:job", job_id=job.id)
