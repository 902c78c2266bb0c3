"""Account pages: sign-up, log-in by password or by Sign-In with Ethereum, the profile with the API token, and
linking a wallet to the account by Sign-In with Ethereum."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render, resolve_url
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from rest_framework import serializers

from marketplace.core.exceptions import ApplicationError
from marketplace.payments import chain
from marketplace.web import forms, selectors, services, signin, siwe

# A wallet-only account has no password, so the session names the backend that logged it in.
_BACKEND = "django.contrib.auth.backends.ModelBackend"
# A signed message with its signature is well under 5 KiB of JSON.
SIWE_BODY_MAX_BYTES = 16 * 1024


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


def _origin(request: HttpRequest) -> str:
    """The URI a message must name: this site's scheme, host and port (EIP-4361 ties a message to an origin)."""
    return f"{request.scheme}://{request.get_host()}"


def _message(request: HttpRequest, statement: str) -> JsonResponse:
    """A fresh EIP-4361 message for the address the wallet reported, with a nonce stored server-side. The chain
    is the marketplace's, whatever chain the wallet is on (its `chain_id` parameter is not used)."""
    try:
        chain_id = signin.siwe_chain_id()
    except chain.ChainUnavailable as exc:
        return JsonResponse({"error": f"The chain does not answer, try again in a moment ({exc})."}, status=503)
    address = request.GET.get("address", "")
    if not siwe.ADDRESS_RE.match(address):
        return JsonResponse({"error": "That is not an Ethereum address (0x and 40 hex digits)."}, status=400)
    now = timezone.now()
    message = siwe.message_for(
        domain=request.get_host(), address=address, uri=_origin(request), chain_id=chain_id,
        nonce=signin.siwe_nonce_issue(now=now), statement=statement, now=now,
    )  # fmt: skip
    return JsonResponse({"message": message.text()})


class SignedMessageInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What a wallet posts: the message as the server issued it, its signature, and where to go next."""

    message = serializers.CharField(max_length=siwe.MAX_MESSAGE_CHARS, trim_whitespace=False)
    signature = serializers.RegexField(
        siwe.SIGNATURE_RE, error_messages={"invalid": "Must be 0x and 130 hex digits (a 65-byte signature)."}
    )
    next = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=2000, default="")


def _refused(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _signed_body(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    """The posted fields, each checked for its type and size; else the refusal naming the first bad field (a body
    over SIWE_BODY_MAX_BYTES is not read at all)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > SIWE_BODY_MAX_BYTES:
        return _refused(f"The body is over {SIWE_BODY_MAX_BYTES} bytes: send the signed message only.", 413)
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:  # not JSON, or not UTF-8
        return _refused("Send a JSON object with the signed message and its signature.")
    if not isinstance(body, dict):
        return _refused("Send a JSON object with the signed message and its signature.")
    data = SignedMessageInputSerializer(data=body)
    if not data.is_valid():
        fields = {name: [str(e) for e in errors] for name, errors in data.errors.items()}
        name, problems = next(iter(fields.items()))
        return _refused(f"{name}: {problems[0]}", fields=fields)
    return dict(data.validated_data)


def _verified(request: HttpRequest, statement: str) -> tuple[str, dict[str, Any]] | JsonResponse:
    """The address that signed the posted message and the posted fields, or the 400 that says why not."""
    body = _signed_body(request)
    if isinstance(body, JsonResponse):
        return body
    text, signature = body["message"], body["signature"]
    try:
        expected = siwe.Expected(
            domain=request.get_host(), uri=_origin(request), chain_id=signin.siwe_chain_id(), statement=statement
        )
        address = siwe.verify(
            text=text, signature=signature, expected=expected, consume_nonce=signin.siwe_nonce_consume
        )
    except chain.ChainUnavailable as exc:
        return JsonResponse({"error": f"The chain does not answer, try again in a moment ({exc})."}, status=503)
    except siwe.SiweError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return address, body


@login_required
@require_GET
def siwe_message(request: HttpRequest) -> JsonResponse:
    """The message that links a wallet to the logged-in account."""
    return _message(request, siwe.LINK_STATEMENT)


@login_required
@require_POST
def siwe_verify(request: HttpRequest) -> JsonResponse:
    verified = _verified(request, siwe.LINK_STATEMENT)
    if isinstance(verified, JsonResponse):
        return verified
    address, _ = verified
    try:
        services.wallet_link(user=request.user, address=address)
    except services.WalletTaken as exc:
        return JsonResponse({"error": exc.message}, status=409)
    return JsonResponse({"address": address})


@require_GET
def siwe_login_message(request: HttpRequest) -> JsonResponse:
    """The message that signs in (or signs up) with a wallet alone."""
    return _message(request, siwe.LOGIN_STATEMENT)


@require_POST
def siwe_login(request: HttpRequest) -> JsonResponse:
    """Log in the account whose wallet signed the message, creating it on the wallet's first sign-in."""
    verified = _verified(request, siwe.LOGIN_STATEMENT)
    if isinstance(verified, JsonResponse):
        return verified
    address, body = verified
    try:
        user, created = signin.wallet_sign_in(address=address)
    except ApplicationError as exc:
        return JsonResponse({"error": exc.message}, status=exc.status)
    login(request, user, backend=_BACKEND)
    next_url = body["next"] or ""
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, require_https=request.is_secure()):
        next_url = resolve_url(settings.LOGIN_REDIRECT_URL)
    if created:
        messages.success(request, f"Welcome, {user.username}. Your wallet is your login: no password needed.")
    return JsonResponse({"address": address, "username": user.username, "created": created, "redirect": next_url})
