"""The dashboard's pages. Thin: reads come from the apps' selectors and models, writes go through the same
services the REST API uses, so a job posted here is exactly a job posted through the API."""

from __future__ import annotations

import io
import json
import logging
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.management import call_command
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from marketplace.core.exceptions import ValidationFailed
from marketplace.jobs import selectors, services
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task, TaskState
from marketplace.nodes.models import Node
from marketplace.payments.models import Payout, PayoutState
from marketplace.web import forms, siwe
from marketplace.web.models import Profile

logger = logging.getLogger(__name__)

TOKEN = 10**18


def _tokens(base_units: int) -> str:
    whole, fraction = divmod(int(base_units), TOKEN)
    return f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")


# Accounts ----------------------------------------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    form = forms.SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        messages.success(request, f"Welcome, {user.username}. Post a job, or enrol a node to earn.")
        return redirect("web:jobs")
    return render(request, "web/accounts/signup.html", {"form": form})


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    mine, _ = Profile.objects.get_or_create(user=request.user)
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=request.user)
    return render(request, "web/accounts/profile.html", {"profile": mine, "api_token": token.key})


@login_required
def siwe_message(request: HttpRequest) -> JsonResponse:
    """A fresh EIP-4361 message for the address the wallet reported, bound to this session by its nonce."""
    address = request.GET.get("address", "")
    chain_id = int(request.GET.get("chain_id", "1") or 1)
    nonce = siwe.new_nonce()
    try:
        message = siwe.message_for(
            domain=request.get_host(), address=address, uri=request.build_absolute_uri("/"), chain_id=chain_id,
            nonce=nonce,
        )  # fmt: skip
    except siwe.SiweError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    request.session["siwe_nonce"] = nonce
    return JsonResponse({"message": message.text()})


@login_required
@require_POST
def siwe_verify(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        text, signature = str(body["message"]), str(body["signature"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "Send the signed message and its signature."}, status=400)
    try:
        address = siwe.verify(
            text=text, signature=signature, domain=request.get_host(), nonce=request.session.pop("siwe_nonce", None)
        )
    except siwe.SiweError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    taken = Profile.objects.filter(wallet_address=address).exclude(user=request.user).exists()
    if taken:
        return JsonResponse({"error": "This wallet is linked to another account."}, status=409)
    Profile.objects.update_or_create(
        user=request.user, defaults={"wallet_address": address, "wallet_linked_at": timezone.now()}
    )
    return JsonResponse({"address": address})


# Jobs --------------------------------------------------------------------------------------------------------


@login_required
def jobs(request: HttpRequest) -> HttpResponse:
    rows = []
    for job in selectors.job_list(poster_id=request.user.pk)[:100]:
        rows.append({"job": job, "progress": selectors.job_progress(job=job)})
    return render(request, "web/jobs/list.html", {"rows": rows})


def _post(request: HttpRequest, form: Any, kind: str) -> HttpResponse | None:
    """Create the job from a valid form through the jobs service; field errors land next to their fields."""
    try:
        job = services.job_create(
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
    messages.success(request, f"Job posted as a draft; fund it to start (quote {_tokens(job.quote)} HWC).")
    return redirect("web:job", job_id=job.id)


@login_required
def job_new(request: HttpRequest, kind: str) -> HttpResponse:
    form_class = {"render": forms.RenderJobForm, "train": forms.TrainJobForm}.get(kind)
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
    """The live quote (htmx): price × tasks × replication plus the fee, and an estimated duration."""
    form_class = {"render": forms.RenderJobForm, "train": forms.TrainJobForm}[kind]
    form = form_class(request.POST or None, user=request.user)
    form.is_valid()
    return HttpResponse(form.quote_text())


def _job_context(job: Job) -> dict[str, Any]:
    counts = selectors.job_task_counts(job=job)
    assignments = Assignment.objects.filter(task__job=job)
    working = assignments.filter(state=AssignmentState.RUNNING).values("node").distinct().count()
    payouts = list(Payout.objects.filter(job=job).select_related("node").order_by("created_at"))
    paid = sum(int(p.amount) for p in payouts if p.state == PayoutState.SETTLED)
    results = (
        assignments.filter(state__in=[AssignmentState.ACCEPTED, AssignmentState.REJECTED, AssignmentState.SUBMITTED])
        .select_related("task", "node")
        .order_by("task__index", "leased_at")
    )
    from marketplace.payments.models import EntryKind, LedgerEntry

    refunded = sum(
        int(a) for a in LedgerEntry.objects.filter(job=job, kind=EntryKind.REFUND).values_list("amount", flat=True)
    )
    progress = selectors.job_progress(job=job)
    eta = None
    if job.state == JobState.RUNNING and job.funded_at and 0 < progress < 1:
        elapsed = (timezone.now() - job.funded_at).total_seconds()
        eta = int(elapsed / progress * (1 - progress))
    context: dict[str, Any] = {
        "job": job,
        "counts": [(s, counts.get(s, 0)) for s in TaskState.values],
        "progress": progress,
        "percent": round(progress * 100),
        "working": working,
        "replicas": assignments.count(),
        "eta": eta,
        "results": results[:200],
        "payouts": payouts,
        "paid": _tokens(paid),
        "refunded": _tokens(refunded) if refunded else None,
        "quote": _tokens(job.quote),
        "output": getattr(job, "output", None) if hasattr(job, "output") else None,
        "live": job.state in (JobState.DRAFT, JobState.FUNDED, JobState.RUNNING),
    }
    if job.kind == "train":
        from marketplace.federated.models import TrainData, TrainRound

        rounds = list(TrainRound.objects.filter(job=job).order_by("index"))
        data = TrainData.objects.filter(job=job).first()
        context["rounds"] = rounds
        context["train_data"] = data
        context["curve"] = json.dumps(
            {
                "labels": [r.index + 1 for r in rounds if r.metrics],
                "accuracy": [r.metrics.get("accuracy") for r in rounds if r.metrics],
                "loss": [r.metrics.get("loss") for r in rounds if r.metrics],
                "kib_up": [round(sum(r.metrics.get("bytes_up", {}).values()) / 1024, 1) for r in rounds if r.metrics],
                "untrained": (data.baseline or {}).get("accuracy") if data else None,
            }
        )
    if job.kind == "render" and context["output"] is not None:
        context["previews"] = range(len(context["output"].summary.get("previews", [])))
    return context


@login_required
def job_detail(request: HttpRequest, job_id: UUID) -> HttpResponse:
    job = get_object_or_404(Job, id=job_id, poster=request.user)
    context = _job_context(job)
    context["funding"] = _funding(job)
    context["refund"] = _refund(job)
    return render(request, "web/jobs/detail.html", context)


def _refund(job: Job) -> dict[str, Any] | None:
    """What a finished job's poster can take back from the escrow (closed by the marketplace once every payout is
    settled); None when there is nothing, or no chain to ask."""
    if job.state not in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED):
        return None
    if not settings.ETH_RPC_URL:
        return None
    try:
        from contracts.connection import connect
        from contracts.deploy import load_deployment

        w3 = connect(settings.ETH_RPC_URL)
        dep = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
        on_chain = dep.escrow_contract(w3).job_of(job.id)
    except Exception:
        return None
    if on_chain.funded == 0 or on_chain.remaining == 0:
        return None
    return {
        "escrow": dep.escrow,
        "chain_id": dep.chain_id,
        "job_id": str(job.id),
        "remaining": _tokens(on_chain.remaining),
        "closed": on_chain.closed,
        "poster": on_chain.poster,
    }


@login_required
def job_live(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """The part of the job page that changes (htmx polls it every two seconds while the job is live)."""
    job = get_object_or_404(Job, id=job_id, poster=request.user)
    return render(request, "web/jobs/_live.html", _job_context(job))


def _funding(job: Job) -> dict[str, Any] | None:
    if job.state != JobState.DRAFT:
        return None
    info: dict[str, Any] = {
        "job_id": str(job.id),
        "amount": _tokens(job.quote),
        "amount_base": str(job.quote),
        "deadline": int(job.deadline.timestamp()),
    }
    info["dev"] = bool(settings.HASHWORK["DEV_FUNDING"])
    try:
        from contracts import devchain
        from contracts.connection import connect
        from contracts.deploy import load_deployment

        if settings.ETH_RPC_URL:
            w3 = connect(settings.ETH_RPC_URL)
            dep = load_deployment(settings.CHAIN_DEPLOYMENTS_FILE, w3.eth.chain_id)
            fee_bps = dep.escrow_contract(w3).fee_bps()
            info.update(
                escrow=dep.escrow,
                token=dep.token,
                chain_id=dep.chain_id,
                fee_bps=fee_bps,
                total=_tokens(job.quote + job.quote * fee_bps // 10_000),
                total_base=str(job.quote + job.quote * fee_bps // 10_000),
                local=dep.chain_id in devchain.LOCAL_CHAIN_IDS,
            )
    except Exception as exc:  # the page still works without a chain: it says so
        info["chain_problem"] = f"{type(exc).__name__}: {exc}"
    return info


@login_required
@require_POST
def job_fund_dev(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """ "Fund from dev account": on a local chain, a dev account funds the escrow (as `chain fund-dev`); without a
    chain, the dev funding service marks it funded."""
    job = get_object_or_404(Job, id=job_id, poster=request.user)
    funding = _funding(job) or {}
    try:
        if funding.get("local"):
            out = io.StringIO()
            call_command("chain", "fund-dev", str(job.id), stdout=out)
            messages.success(request, out.getvalue().strip())
        else:
            services.job_fund_dev(job_id=job.id, actor=request.user)
            messages.success(request, "Funded by the dev service; the job starts in a moment.")
    except Exception as exc:
        logger.warning("dev funding of job %s failed: %s", job.id, exc)
        messages.error(request, f"Could not fund the job from the dev account: {exc}")
    return redirect("web:job", job_id=job.id)


@login_required
@require_POST
def job_cancel(request: HttpRequest, job_id: UUID) -> HttpResponse:
    job = get_object_or_404(Job, id=job_id, poster=request.user)
    try:
        services.job_cancel(job_id=job.id, poster=request.user)
        messages.success(request, "Job cancelled: open work was revoked; verified work stays paid.")
    except Exception as exc:
        messages.error(request, str(exc))
    return redirect("web:job", job_id=job.id)


# Node operators ----------------------------------------------------------------------------------------------


@login_required
def nodes(request: HttpRequest) -> HttpResponse:
    from rest_framework.authtoken.models import Token

    from marketplace.payments import selectors as payment_selectors

    token, _ = Token.objects.get_or_create(user=request.user)
    mine = list(Node.objects.filter(operator=request.user, is_active=True).order_by("name"))
    rows = []
    for node in mine:
        current = (
            Assignment.objects.filter(node=node, state__in=[AssignmentState.LEASED, AssignmentState.RUNNING])
            .select_related("task__job")
            .first()
        )
        earnings = payment_selectors.node_earnings(node=node)
        rows.append({"node": node, "current": current, "earnings": earnings})
    payouts = Payout.objects.filter(node__operator=request.user).select_related("node").order_by("-created_at")[:50]
    return render(
        request,
        "web/nodes/list.html",
        {
            "rows": rows,
            "payouts": payouts,
            "token": token.key,
            "marketplace_url": request.build_absolute_uri("/").rstrip("/"),
        },
    )


@login_required
@require_POST
def node_withdraw(request: HttpRequest, node_id: UUID) -> HttpResponse:
    """Ask the node to withdraw its escrow credit: its agent does it at its next heartbeat, with its own key."""
    node = get_object_or_404(Node, id=node_id, operator=request.user, is_active=True)
    Node.objects.filter(id=node.id).update(withdraw_requested_at=timezone.now())
    when = "at its next heartbeat" if node.is_online else "when it is next online"
    messages.success(request, f"{node.name} will withdraw its credit to {node.wallet_address} {when}.")
    return redirect("web:nodes")


# The network (public) ----------------------------------------------------------------------------------------


def network(request: HttpRequest) -> HttpResponse:
    from marketplace.nodes.selectors import nodes_online

    online = list(nodes_online())
    gpus = sum(len(n.capabilities.get("gpus") or []) for n in online)
    done = Job.objects.filter(state=JobState.COMPLETED)
    images = sum(
        int((o or {}).get("images") or 0) for o in done.filter(kind="render").values_list("output__summary", flat=True)
    )
    from marketplace.federated.models import RoundState, TrainRound

    rounds = TrainRound.objects.filter(state=RoundState.CLOSED).count()
    paid = Payout.objects.filter(state=PayoutState.SETTLED).aggregate(n=Count("id"))["n"]
    paid_total = sum(int(a) for a in Payout.objects.filter(state=PayoutState.SETTLED).values_list("amount", flat=True))
    days = []
    today = timezone.now().date()
    for back in range(13, -1, -1):
        day = today - timezone.timedelta(days=back)
        days.append(
            {
                "day": day.isoformat(),
                "jobs": Job.objects.filter(finished_at__date=day, state=JobState.COMPLETED).count(),
                "accepted": Assignment.objects.filter(finished_at__date=day, state=AssignmentState.ACCEPTED).count(),
            }
        )
    context = {
        "online": len(online),
        "gpus": gpus,
        "jobs_done": done.count(),
        "images": images,
        "rounds": rounds,
        "payouts": paid,
        "paid": _tokens(paid_total),
        "tasks_running": Task.objects.filter(state=TaskState.RUNNING).count(),
        "history": json.dumps(days),
        "kinds": list(done.values("kind").annotate(n=Count("id")).order_by("kind")),
        "busy": Node.objects.filter(Q(busy_slots__gt=0), is_active=True).aggregate(s=Sum("busy_slots"))["s"] or 0,
    }
    return render(request, "web/network.html", context)


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("web:jobs")
    return redirect("web:network")
