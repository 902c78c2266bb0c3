"""Thin API views for money: where the escrow is, and a node's earnings."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import ERRORS
from marketplace.api.fields import TokenAmountField
from marketplace.nodes.authentication import NodeApiView
from marketplace.payments import selectors
from marketplace.payments.models import Payout


class ChainInfoOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    configured = serializers.BooleanField(help_text="False while the marketplace runs without a chain.")
    chain_id = serializers.IntegerField(required=False)
    rpc_url = serializers.CharField(required=False, help_text="JSON-RPC URL for wallets and node agents.")
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
