"""The public network page, and the home page that sends each visitor to theirs."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from marketplace.web import selectors


def network(request: HttpRequest) -> HttpResponse:
    return render(request, "web/network.html", selectors.network_stats())


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("web:jobs")
    return redirect("web:network")
