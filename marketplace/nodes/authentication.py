"""Node agents authenticate with `Authorization: Node <token>`; the token is shown once, at enrolment."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request
from rest_framework.views import APIView

from marketplace.nodes.models import Node

KEYWORD = "Node"
TOKEN_PREFIX = "hwn_"  # noqa: S105 - a public prefix, not a secret


def token_new() -> tuple[str, str]:
    """A new node token and the hash stored for it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class NodeTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, Node] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace") != KEYWORD:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Node authorization header: use 'Node <token>'.")
        token = header[1].decode(errors="replace")
        node = Node.objects.select_related("operator").filter(token_hash=token_hash(token)).first()
        if node is None:
            raise exceptions.AuthenticationFailed("Unknown node token: enrol the node again.")
        if not node.is_active:
            raise exceptions.AuthenticationFailed("This node has been removed or banned.")
        if not node.operator.is_active:
            raise exceptions.AuthenticationFailed("The node's operator account is disabled.")
        return node.operator, node

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class IsNode(permissions.BasePermission):
    message = "This endpoint is for node agents: authenticate with 'Authorization: Node <token>'."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Node)


class NodeApiView(APIView):
    """Base of every endpoint a node agent calls: node token only, and the caller must be a node."""

    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsNode]


class NodeTokenScheme(OpenApiAuthenticationExtension):
    """Documents the node token in the OpenAPI schema."""

    target_class = "marketplace.nodes.authentication.NodeTokenAuthentication"
    name = "nodeToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Node token from enrolment, prefixed with 'Node ': `Authorization: Node hwn_…`.",
        }
