"""Thin API views for node enrolment (operators) and heartbeats (node agents)."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import ERRORS, ErrorSerializer
from marketplace.api.pagination import Pagination, paginated
from marketplace.core.enqueue import schedule_request
from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment
from marketplace.jobs.reputation import reputations
from marketplace.jobs.services import node_heartbeat
from marketplace.nodes import services
from marketplace.nodes.authentication import NodeApiView
from marketplace.nodes.models import Node
from marketplace.nodes.network import client_address
from protocol import PROTOCOL, UPGRADE, BrokerHealth, ProtocolError
from protocol.capabilities import Capabilities
from protocol.heartbeat import BROKER_ERROR_MAX


def request_address(request: Request) -> str | None:
    """Where `request` comes from: REMOTE_ADDR, or X-Forwarded-For behind a proxy listed in TRUSTED_PROXIES."""
    return client_address(request.META, trusted_proxies=settings.HASHWORK["TRUSTED_PROXIES"])


class CapabilitiesField(serializers.DictField):  # type: ignore[type-arg]
    """A node's capabilities, checked against protocol.Capabilities (types and ranges); stored as the checked,
    normalised dict, so the scheduler never meets a malformed one."""

    def to_internal_value(self, data: object) -> dict[str, object]:
        try:
            return Capabilities.from_json(data).model_dump(mode="json", exclude_unset=True, exclude_none=True)
        except ProtocolError as exc:
            raise serializers.ValidationError(str(exc)) from None


class NodeEnrollInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", help_text="Letters, digits, . _ -")
    wallet_address = serializers.CharField(max_length=42, help_text="0x-address that payouts go to.")
    capabilities = CapabilitiesField(default=dict, help_text="What `nodeagent probe --json` reports.")
    slots = serializers.IntegerField(default=1, min_value=1, max_value=services.MAX_SLOTS)
    min_price = serializers.DictField(default=dict, help_text="{kind: minimum price per replica in base units}.")


class NodeOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    is_online = serializers.BooleanField(read_only=True)

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "wallet_address",
            "capabilities",
            "slots",
            "min_price",
            "is_active",
            "is_online",
            "last_heartbeat",
            "address",
            "valid_count",
            "invalid_count",
            "expired_count",
            "consecutive_valid",
            "broker_ok",
            "broker_error",
            "broker_failed_at",
            "created_at",
        ]


class NodeEnrollOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    node = NodeOutputSerializer()
    token = serializers.CharField(help_text="The node's API token, shown once: 'Authorization: Node <token>'.")
    broker_url = serializers.CharField(allow_null=True)
    broker_prefix = serializers.CharField(allow_null=True)


class NodeEnrollApi(APIView):
    @extend_schema(
        operation_id="nodes_enroll",
        request=NodeEnrollInputSerializer,
        responses={
            201: NodeEnrollOutputSerializer,
            400: ERRORS[400],
            401: ERRORS[401],
            429: OpenApiResponse(
                ErrorSerializer, description="The operator's hourly enrolment limit is reached; see Retry-After."
            ),
        },
        description="An operator registers a node; the response carries the node's credentials (shown once).",
    )
    def post(self, request: Request) -> Response:
        data = NodeEnrollInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            enrolment = services.node_enroll(
                operator=request.user, address=request_address(request), **data.validated_data
            )
        except services.EnrolmentRateLimited as exc:
            return Response(
                {"message": exc.message, "extra": exc.extra},
                status=exc.status,
                headers={"Retry-After": str(exc.extra["retry_after_seconds"])},
            )
        body = NodeEnrollOutputSerializer(
            {
                "node": enrolment.node,
                "token": enrolment.token,
                "broker_url": enrolment.broker_url,
                "broker_prefix": enrolment.broker_prefix,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class ProgressSerializer(serializers.Serializer):  # type: ignore[type-arg]
    done = serializers.IntegerField(min_value=0)
    total = serializers.IntegerField(min_value=1)


class BrokerHealthSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The agent's worker's broker connection, read by protocol.BrokerHealth (one definition for both sides)."""

    ok = serializers.BooleanField(help_text="Whether the node's worker is connected to the broker and consuming.")
    error = serializers.CharField(
        max_length=BROKER_ERROR_MAX, allow_blank=True, default="", help_text="The last connection error, if not ok."
    )

    def to_internal_value(self, data: object) -> BrokerHealth:
        try:
            return BrokerHealth.from_json(data)
        except ProtocolError as exc:
            raise serializers.ValidationError(str(exc)) from None


class NodeHeartbeatInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    protocol = serializers.CharField(
        required=False,
        max_length=64,
        help_text=f"The agent's protocol version ({PROTOCOL!r}); agents older than the versioned protocol omit it.",
    )
    capabilities = CapabilitiesField(required=False)
    free_slots = serializers.IntegerField(min_value=0)
    accepting = serializers.BooleanField(default=True, help_text="False while paused or too hot: lease nothing.")
    load = serializers.FloatField(required=False, min_value=0)
    running = serializers.ListField(
        child=serializers.UUIDField(), default=list, max_length=256, help_text="Assignments running now."
    )
    progress = serializers.DictField(
        child=ProgressSerializer(),
        required=False,
        help_text='Progress of running assignments, by id: {"<assignment id>": {"done": 3, "total": 8}}.',
    )
    broker = BrokerHealthSerializer(
        required=False,
        help_text="Not ok: the node is leased nothing, its unstarted leases are released and its broker user is "
        "made again (after a Redis restart). Omitted (older agents): taken as ok.",
    )

    def validate_protocol(self, value: str) -> str:
        # An agent of another protocol version gets the way to upgrade, instead of messages it cannot read.
        if value != PROTOCOL:
            raise serializers.ValidationError(f"This marketplace speaks {PROTOCOL!r}, the agent {value!r}. {UPGRADE}")
        return value

    def validate_progress(self, value: dict[str, dict[str, int]]) -> dict[UUID, tuple[int, int]]:
        if len(value) > 256:
            raise serializers.ValidationError("At most 256 assignments.")
        parsed: dict[UUID, tuple[int, int]] = {}
        for key, item in value.items():
            try:
                assignment_id = UUID(key)
            except ValueError:
                raise serializers.ValidationError(f"{key!r} is not an assignment id.") from None
            if item["done"] > item["total"]:
                raise serializers.ValidationError(f"{key}: done ({item['done']}) exceeds total ({item['total']}).")
            parsed[assignment_id] = (item["done"], item["total"])
        return parsed


class NodeHeartbeatOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    node = NodeOutputSerializer()
    revoked = serializers.ListField(
        child=serializers.UUIDField(), help_text="Reported assignments the node no longer holds: stop them."
    )
    withdraw = serializers.BooleanField(
        help_text="The operator asked for the node's escrow credit to be withdrawn to its wallet: do it now."
    )


class NodeHeartbeatApi(NodeApiView):
    @extend_schema(
        operation_id="nodes_heartbeat",
        request=NodeHeartbeatInputSerializer,
        responses={200: NodeHeartbeatOutputSerializer, 400: ERRORS[400], 401: ERRORS[401]},
        description="The agent is alive: record what it reports and extend the leases of what it runs.",
    )
    def post(self, request: Request) -> Response:
        data = NodeHeartbeatInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.node_address_record(node=request.auth, address=request_address(request))
        beat = node_heartbeat(
            node=request.auth,
            capabilities=data.validated_data.get("capabilities"),
            free_slots=data.validated_data["free_slots"],
            accepting=data.validated_data["accepting"],
            running=data.validated_data["running"],
            progress=data.validated_data.get("progress"),
            broker=data.validated_data.get("broker"),
        )
        return Response(
            NodeHeartbeatOutputSerializer({"node": beat.node, "revoked": beat.revoked, "withdraw": beat.withdraw}).data
        )


class NodeReleaseInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    accepting = serializers.BooleanField(default=False, help_text="Whether to keep leasing new work to the node.")


class NodeReleaseOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    released = serializers.IntegerField()


class NodeReleaseApi(NodeApiView):
    @extend_schema(
        operation_id="nodes_release",
        request=NodeReleaseInputSerializer,
        responses={200: NodeReleaseOutputSerializer, 400: ERRORS[400], 401: ERRORS[401]},
        description="Hand back every open assignment of the node (it is shutting down); they are re-leased at once.",
    )
    def post(self, request: Request) -> Response:
        data = NodeReleaseInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        released = dispatch.node_release(node=request.auth, accepting=data.validated_data["accepting"])
        schedule_request()
        return Response({"released": released})


class NodeAssignmentOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    job = serializers.UUIDField(source="task.job_id")
    kind = serializers.CharField(source="task.job.kind")
    task_index = serializers.IntegerField(source="task.index")
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = [
            "id",
            "job",
            "kind",
            "task_index",
            "state",
            "state_reason",
            "progress",
            "leased_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(ProgressSerializer(allow_null=True))
    def get_progress(self, assignment: Assignment) -> dict[str, int] | None:
        return assignment.progress


class NodeAssignmentListApi(NodeApiView):
    @extend_schema(
        operation_id="nodes_me_assignments_list",
        responses={200: paginated(NodeAssignmentOutputSerializer, "NodeAssignment"), 401: ERRORS[401]},
        description="This node's assignments, newest first.",
    )
    def get(self, request: Request) -> Response:
        assignments = Assignment.objects.filter(node=request.auth).select_related("task__job").order_by("-leased_at")
        paginator = Pagination()
        page = paginator.paginate_queryset(assignments, request, view=self)
        return paginator.get_paginated_response(NodeAssignmentOutputSerializer(page, many=True).data)


class NodeMeOutputSerializer(NodeOutputSerializer):
    reputation = serializers.SerializerMethodField(
        help_text="{kind: reputation now (decayed)}: trusted on a kind at HASHWORK TRUSTED_AFTER or more."
    )

    class Meta(NodeOutputSerializer.Meta):
        fields = [*NodeOutputSerializer.Meta.fields, "reputation"]

    @extend_schema_field(serializers.DictField(child=serializers.FloatField()))
    def get_reputation(self, node: Node) -> dict[str, float]:
        earned = reputations(node_ids=[node.id]).get(node.id, {})
        return {kind: round(score, 3) for kind, score in sorted(earned.items())}


class NodeMeApi(NodeApiView):
    @extend_schema(operation_id="nodes_me", responses={200: NodeMeOutputSerializer, 401: ERRORS[401]})
    def get(self, request: Request) -> Response:
        return Response(NodeMeOutputSerializer(request.auth).data)
