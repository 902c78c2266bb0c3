"""Pagination for every list endpoint."""

from __future__ import annotations

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


def paginated(serializer: type[serializers.Serializer], name: str) -> serializers.Serializer:  # type: ignore[type-arg]
    """The OpenAPI schema of a page of `serializer` items, as Pagination answers it (count, next, previous,
    results): list views paginate by hand, so drf-spectacular cannot see it."""
    return inline_serializer(
        name=f"Paginated{name}List",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
        },
    )
