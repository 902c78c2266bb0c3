"""A node operator's page: their nodes with current work and earnings, payouts, and withdrawals."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from marketplace.nodes import services as node_services
from marketplace.web import selectors, services


@login_required
def node_list(request: HttpRequest) -> HttpResponse:
    context = {
        "rows": selectors.node_rows(operator=request.user),
        "payouts": selectors.operator_payouts(operator=request.user),
        "token": services.api_token_get_or_create(user=request.user),
        "marketplace_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "web/nodes/list.html", context)


@login_required
@require_POST
def node_withdraw(request: HttpRequest, node_id: UUID) -> HttpResponse:
    """Ask the node to withdraw its escrow credit: its agent does it at its next heartbeat, with its own key."""
    node = selectors.node_get_for_operator(node_id=node_id, operator=request.user)
    node_services.node_withdraw_request(node=node)
    when = "at its next heartbeat" if node.is_online else "when it is next online"
    messages.success(request, f"{node.name} will withdraw its credit to {node.wallet_address} {when}.")
    return redirect("web:nodes")
