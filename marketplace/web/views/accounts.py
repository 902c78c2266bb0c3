"""Account pages: sign-up, the profile with the API token, and linking a wallet by Sign-In with Ethereum."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from marketplace.web import forms, selectors, services, siwe


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
    context = {
        "profile": selectors.profile_get(user=request.user),
        "api_token": services.api_token_get_or_create(user=request.user),
    }
    return render(request, "web/accounts/profile.html", context)


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
    try:
        services.wallet_link(user=request.user, address=address)
    except services.WalletTaken as exc:
        return JsonResponse({"error": exc.message}, status=409)
    return JsonResponse({"address": address})
