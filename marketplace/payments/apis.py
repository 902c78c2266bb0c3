"""Thin API views for money: where the escrow is, a job's escrow account, and a node's earnings."""

from __future__ import annotations

from uuid import UUID

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import ERRORS, error_responses
from marketplace.api.fields import TokenAmountField
from marketplace.jobs import selectors as job_selectors
from marketplace.nodes.authentication import NodeApiView
from marketplace.payments import selectors, services
from marketplace.payments.models import Payout


class ChainInfoOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    configured = serializers.BooleanField(help_text="False while the marketplace runs without a chain.")
    chain_id = serializers.IntegerField(required=False)
    rpc_url = serializers.CharField(
        required=False,
        help_text="JSON-RPC URL for wallets and node agents: PUBLIC_ETH_RPC_URL, or a local chain's; absent otherwise "
        "(a provider's URL, which may hold its API key, is never published).",
    )
    escrow = serializers.CharField(required=False)
    token = serializers.CharField(required=False)
    fee_bps = serializers.IntegerField(required=False)


class ChainInfoApi(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="chain_retrieve", responses={200: ChainInfoOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(ChainInfoOutputSerializer(selectors.chain_info()).data)


class PayoutOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    amount = TokenAmountField()

    class Meta:
        model = Payout
        fields = ["id", "job", "assignment", "amount", "state", "payout_index", "tx_hash", "block", "settled_at"]


class EarningsOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    settled = TokenAmountField(help_text="Paid into the node's credit on chain.")
    pending = TokenAmountField(help_text="Earned, not yet settled on chain.")
    credit = TokenAmountField(allow_null=True, help_text="Withdrawable now (null when the chain is unreachable).")
    payouts = PayoutOutputSerializer(many=True)


class NodeEarningsApi(NodeApiView):
    @extend_schema(operation_id="nodes_me_earnings", responses={200: EarningsOutputSerializer, 401: ERRORS[401]})
    def get(self, request: Request) -> Response:
        earnings = selectors.node_earnings(node=request.auth)
        return Response(
            EarningsOutputSerializer(
                {
                    "settled": earnings.settled,
                    "pending": earnings.pending,
                    "credit": earnings.credit,
                    "payouts": earnings.payouts,
                }
            ).data
        )


class SettlementOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    refused_step = serializers.CharField(help_text="release or close")
    refusals = serializers.IntegerField(help_text="Refusals in a row.")
    last_error = serializers.CharField(help_text="The escrow's decoded reason.")
    retry_at = serializers.DateTimeField(help_text="When the marketplace tries again.")


class JobEscrowOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    job = serializers.UUIDField()
    escrow_id = serializers.CharField(
        allow_null=True, help_text="The bytes32 id to fund (0x-hex): your wallet's 20 bytes, then 12 of the job's."
    )
    wallet = serializers.CharField(allow_null=True, help_text="The only wallet that can fund escrow_id first.")
    max_payouts = serializers.IntegerField(help_text="fund()'s maxPayouts: the job's terms.")
    max_payout = TokenAmountField(help_text="fund()'s maxPayout, base units: the price per replica.")
    deadline_min = serializers.IntegerField(
        help_text="The earliest escrow deadline (unix seconds) that starts the job: its deadline plus the margin."
    )
    funding = TokenAmountField(help_text="The amount to fund: every replica's price plus the escrow's fee.")
    settlement = SettlementOutputSerializer(allow_null=True, help_text="The last refused release or close.")
    closed_at = serializers.DateTimeField(allow_null=True)


class JobEscrowBindInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    wallet = serializers.CharField(help_text="The wallet you will fund the job from (0x-address).")


class JobEscrowApi(APIView):
    @extend_schema(
        operation_id="jobs_escrow_retrieve", responses={200: JobEscrowOutputSerializer, **error_responses(401, 404)}
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = job_selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        return Response(JobEscrowOutputSerializer(selectors.job_escrow(job=job)).data)

    @extend_schema(
        operation_id="jobs_escrow_bind",
        request=JobEscrowBindInputSerializer,
        responses={200: JobEscrowOutputSerializer, **error_responses(400, 401, 404, 409)},
        description="Choose the wallet a draft job is funded from: the answer's escrow_id is the id to fund, with "
        "max_payouts, max_payout and a deadline of at least deadline_min. Deposits to any other id do not count.",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = job_selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        data = JobEscrowBindInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.escrow_bind(job_id=job.id, wallet=data.validated_data["wallet"])
        return Response(JobEscrowOutputSerializer(selectors.job_escrow(job=job)).data)
