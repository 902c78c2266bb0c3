"""Reads for the dashboard: the apps' models and selectors, shaped for its templates (scoped to the viewer)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404
from django.utils import timezone

from contracts import devchain
from contracts.units import tokens_format
from marketplace.federated.models import RoundState, TrainData, TrainRound
from marketplace.jobs import selectors as job_selectors
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Result, Task, TaskState
from marketplace.nodes.models import Node
from marketplace.nodes.selectors import nodes_online
from marketplace.payments import chain
from marketplace.payments import selectors as payment_selectors
from marketplace.payments import services as payment_services
from marketplace.payments.models import EntryKind, JobSettlement, LedgerEntry, Payout, PayoutState
from marketplace.payments.services import funding_required
from marketplace.web.models import Profile

logger = logging.getLogger(__name__)

FINISHED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)
LIVE = (JobState.DRAFT, JobState.FUNDED, JobState.RUNNING)


def profile_get(*, user: Any) -> Profile | None:
    """The user's profile; None until they link a wallet."""
    return Profile.objects.filter(user=user).first()


# Jobs --------------------------------------------------------------------------------------------------------


def job_rows(*, poster_id: int, limit: int = 100) -> list[dict[str, Any]]:
    return [
        {"job": job, "progress": job_selectors.job_progress(job=job)}
        for job in job_selectors.job_list(poster_id=poster_id)[:limit]
    ]


def job_get_for_poster(*, job_id: UUID, poster: Any) -> Job:
    """The poster's job; Http404 for anyone else's, so nobody learns that it exists."""
    return get_object_or_404(Job, id=job_id, poster=poster)


def render_datasets_of(*, poster: Any) -> QuerySet[Job]:
    """The poster's completed render jobs, newest first: the datasets a train job can use."""
    return Job.objects.filter(poster=poster, kind="render", state=JobState.COMPLETED).order_by("-finished_at")


def job_page(*, job: Job) -> dict[str, Any]:
    """What the job page shows and its live part refreshes: progress, verification, payments, the output."""
    counts = job_selectors.job_task_counts(job=job)
    assignments = Assignment.objects.filter(task__job=job)
    working = assignments.filter(state=AssignmentState.RUNNING).values("node").distinct().count()
    payouts = list(Payout.objects.filter(job=job).select_related("node").order_by("created_at"))
    paid = sum(int(p.amount) for p in payouts if p.state == PayoutState.SETTLED)
    results = (
        assignments.filter(state__in=[AssignmentState.ACCEPTED, AssignmentState.REJECTED, AssignmentState.SUBMITTED])
        .select_related("task", "node")
        .order_by("task__index", "leased_at")
    )
    refunds = LedgerEntry.objects.filter(job=job, kind=EntryKind.REFUND).values_list("amount", flat=True)
    refunded = sum(int(a) for a in refunds)
    progress = job_selectors.job_progress(job=job)
    eta = None
    if job.state == JobState.RUNNING and job.funded_at and 0 < progress < 1:
        elapsed = (timezone.now() - job.funded_at).total_seconds()
        eta = int(elapsed / progress * (1 - progress))
    # A job without output has no `output` attribute at all (a reverse one-to-one raises, an AttributeError).
    output = getattr(job, "output", None)
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
        "paid": tokens_format(paid),
        "refunded": tokens_format(refunded) if refunded else None,
        "quote": tokens_format(job.quote),
        "output": output,
        "live": job.state in LIVE,
        # A release or close the escrow refused: the reason and the next try (other jobs settle meanwhile).
        "settlement": JobSettlement.objects.filter(job=job, refusals__gt=0).first(),
    }
    if job.kind == "train":
        context.update(_train_page(job))
    if job.kind == "render" and output is not None:
        context["previews"] = range(len(output.summary.get("previews", [])))
    return context


def _train_page(job: Job) -> dict[str, Any]:
    rounds = list(TrainRound.objects.filter(job=job).order_by("index"))
    data = TrainData.objects.filter(job=job).first()
    measured = [r for r in rounds if r.metrics]
    curve = {
        "labels": [r.index + 1 for r in measured],
        "accuracy": [r.metrics.get("accuracy") for r in measured],
        "loss": [r.metrics.get("loss") for r in measured],
        "kib_up": [round(sum(r.metrics.get("bytes_up", {}).values()) / 1024, 1) for r in measured],
        "untrained": (data.baseline or {}).get("accuracy") if data else None,
    }
    return {"rounds": rounds, "train_data": data, "curve": json.dumps(curve)}


def job_funding(*, job: Job) -> dict[str, Any] | None:
    """How a draft job's poster funds it: the escrow, the amount with the escrow's fee, whether dev funding is
    offered; None once it is funded. Without a chain the page still works and says what is wrong."""
    if job.state != JobState.DRAFT:
        return None
    terms = payment_services.funding_terms(job)
    settlement = JobSettlement.objects.filter(job=job).first()
    info: dict[str, Any] = {
        "job_id": str(job.id),
        "amount": tokens_format(job.quote),
        "amount_base": str(job.quote),
        # The escrow's deadline: the job's plus the settlement margin (a shorter one does not start the job).
        "deadline": payment_services.escrow_deadline_min(job),
        "margin_hours": settings.HASHWORK["ESCROW_SETTLEMENT_MARGIN_HOURS"],
        "max_payouts": terms.max_payouts,
        "max_payout": str(terms.max_payout),
        "escrow_id": settlement.escrow_id if settlement else None,
        "wallet": settlement.poster_wallet if settlement else None,
        "dev": bool(settings.HASHWORK["DEV_FUNDING"]),
    }
    if not settings.ETH_RPC_URL:
        return info
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
        fee_bps = dep.escrow_contract(w3).fee_bps()
    except Exception as exc:  # whatever the chain did, the page shows it instead of failing
        info["chain_problem"] = f"{type(exc).__name__}: {exc}"
        return info
    total = funding_required(job=job, fee_bps=fee_bps)
    info.update(
        escrow=dep.escrow,
        token=dep.token,
        chain_id=dep.chain_id,
        fee_bps=fee_bps,
        total=tokens_format(total),
        total_base=str(total),
        local=dep.chain_id in devchain.LOCAL_CHAIN_IDS,
    )
    return info


def job_refund(*, job: Job) -> dict[str, Any] | None:
    """What a finished job's poster can take back from the escrow (closed by the marketplace once every payout is
    settled); None when there is nothing, or no chain to ask."""
    if job.state not in FINISHED or not settings.ETH_RPC_URL:
        return None
    try:
        w3 = chain.web3()
        dep = chain.deployment(w3)
        key = payment_services.escrow_key(job.id)
        on_chain = dep.escrow_contract(w3).job_of(key)
    except Exception:  # no refund offered is the safe answer to any chain trouble (or no escrow id at all)
        return None
    if on_chain.funded == 0 or on_chain.remaining == 0:
        return None
    return {
        "escrow": dep.escrow,
        "chain_id": dep.chain_id,
        "job_id": str(job.id),
        "escrow_id": "0x" + key.hex(),
        "remaining": tokens_format(on_chain.remaining),
        "closed": on_chain.closed,
        "poster": on_chain.poster,
    }


def render_seconds_per_work(*, limit: int = 30) -> list[float]:
    """Seconds per image-pixel-sample of recent accepted render results (the network's measured speed)."""
    rates = []
    accepted = Result.objects.filter(assignment__task__job__kind="render", assignment__state=AssignmentState.ACCEPTED)
    for result in accepted.select_related("assignment__task").order_by("-created_at")[:limit]:
        metrics = result.metrics if isinstance(result.metrics, dict) else {}
        spec = result.assignment.task.payload.get("spec") or {}
        width, height = (spec.get("output") or {}).get("resolution") or [0, 0]
        # Node-reported figures count only as numbers (a string times a resolution would be a string, and a big one).
        images, seconds = _number(metrics.get("images")), _number(metrics.get("seconds"))
        work = images * width * height * ((spec.get("output") or {}).get("samples") or 0)
        if seconds > 0 and work > 0:
            rates.append(seconds / work)
    return rates


def _number(value: object) -> float:
    """A node-reported figure as a float; 0 for anything that is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


def train_round_seconds(*, limit: int = 20) -> list[float]:
    """Wall seconds of recently closed training rounds."""
    closed = TrainRound.objects.filter(state=RoundState.CLOSED).order_by("-closed_at")[:limit]
    return [float(r.metrics["wall_seconds"]) for r in closed if r.metrics.get("wall_seconds")]


def nodes_online_count() -> int:
    return nodes_online().count()


# Node operators ----------------------------------------------------------------------------------------------


def node_rows(*, operator: Any) -> list[dict[str, Any]]:
    """The operator's active nodes, each with its current assignment and its earnings."""
    rows = []
    for node in Node.objects.filter(operator=operator, is_active=True).order_by("name"):
        current = (
            Assignment.objects.filter(node=node, state__in=[AssignmentState.LEASED, AssignmentState.RUNNING])
            .select_related("task__job")
            .first()
        )
        rows.append({"node": node, "current": current, "earnings": payment_selectors.node_earnings(node=node)})
    return rows


def operator_payouts(*, operator: Any, limit: int = 50) -> QuerySet[Payout]:
    return Payout.objects.filter(node__operator=operator).select_related("node").order_by("-created_at")[:limit]


def node_get_for_operator(*, node_id: UUID, operator: Any) -> Node:
    """The operator's active node; Http404 for anyone else's."""
    return get_object_or_404(Node, id=node_id, operator=operator, is_active=True)


# The network (public) ----------------------------------------------------------------------------------------


def _gpu_count(capabilities: Any) -> int:
    """GPUs a node reported; 0 for a record that is not the shape the API checks (older rows, hand edits)."""
    gpus = capabilities.get("gpus") if isinstance(capabilities, dict) else None
    return len(gpus) if isinstance(gpus, list) else 0


def network_stats(*, days: int = 14) -> dict[str, Any]:
    """The public network page: nodes online, work done, tokens paid, and the last `days` days' history."""
    online = list(nodes_online())
    done = Job.objects.filter(state=JobState.COMPLETED)
    summaries = done.filter(kind="render").values_list("output__summary", flat=True)
    settled = [int(a) for a in Payout.objects.filter(state=PayoutState.SETTLED).values_list("amount", flat=True)]
    today = timezone.now().date()
    history = []
    for back in range(days - 1, -1, -1):
        day = today - timezone.timedelta(days=back)
        history.append(
            {
                "day": day.isoformat(),
                "jobs": Job.objects.filter(finished_at__date=day, state=JobState.COMPLETED).count(),
                "accepted": Assignment.objects.filter(finished_at__date=day, state=AssignmentState.ACCEPTED).count(),
            }
        )
    busy = Node.objects.filter(Q(busy_slots__gt=0), is_active=True).aggregate(s=Sum("busy_slots"))["s"]
    return {
        "online": len(online),
        "gpus": sum(_gpu_count(n.capabilities) for n in online),
        "jobs_done": done.count(),
        "images": sum(int((s or {}).get("images") or 0) for s in summaries),
        "rounds": TrainRound.objects.filter(state=RoundState.CLOSED).count(),
        "payouts": len(settled),
        "paid": tokens_format(sum(settled)),
        "tasks_running": Task.objects.filter(state=TaskState.RUNNING).count(),
        "history": json.dumps(history),
        "kinds": list(done.values("kind").annotate(n=Count("id")).order_by("kind")),
        "busy": busy or 0,
    }
