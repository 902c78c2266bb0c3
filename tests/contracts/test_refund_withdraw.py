"""refund() and withdraw(): posters get the unspent rest back, payees take their credit, even while paused."""

from __future__ import annotations

import pytest
from web3 import Web3
from web3.types import RPCEndpoint

from contracts import errors
from contracts.bindings import ComputeToken, JobEscrow, Payout
from contracts.sender import Sender
from tests.contracts.helpers import TOKENS, FundedJob, advance_time, fee, job_id, now


def test_refund_before_the_deadline_of_an_open_job_reverts(escrow: JobEscrow, job: FundedJob) -> None:
    with pytest.raises(errors.EscrowRefundTooEarly) as raised:
        escrow.connect(job.poster).refund(job.id)

    assert raised.value.fields == {"jobId": job.id, "deadline": job.deadline}


def test_refund_exactly_at_the_deadline_is_still_too_early(w3: Web3, escrow: JobEscrow, job: FundedJob) -> None:
    # The next block is mined exactly at the deadline.
    w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [job.deadline])

    with pytest.raises(errors.EscrowRefundTooEarly):
        escrow.connect(job.poster).refund(job.id)


def test_after_the_deadline_the_poster_gets_the_unspent_rest_back(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 100 * TOKENS)])
    rest = job.amount - 100 * TOKENS - fee(100 * TOKENS)
    before = token.balance_of(job.poster.address)
    advance_time(w3, job.deadline - now(w3) + 1)

    receipt = escrow.connect(job.poster).refund(job.id)

    assert token.balance_of(job.poster.address) == before + rest
    assert escrow.job_of(job.id).remaining == 0
    assert token.balance_of(escrow.address) == 100 * TOKENS + fee(100 * TOKENS)
    (event,) = escrow.events(receipt, "JobRefunded")
    assert event["args"] == {"jobId": job.id, "poster": job.poster.address, "amount": rest}


def test_a_closed_job_is_refundable_before_its_deadline(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender
) -> None:
    before = token.balance_of(job.poster.address)
    escrow.connect(operator).close(job.id)

    escrow.connect(job.poster).refund(job.id)

    assert token.balance_of(job.poster.address) == before + job.amount


def test_refunding_twice_reverts(escrow: JobEscrow, job: FundedJob, operator: Sender) -> None:
    escrow.connect(operator).close(job.id)
    escrow.connect(job.poster).refund(job.id)

    with pytest.raises(errors.EscrowNothingToRefund) as raised:
        escrow.connect(job.poster).refund(job.id)

    assert raised.value.fields == {"jobId": job.id}


@pytest.mark.parametrize("who", ["stranger", "operator", "admin", "other_poster"])
def test_nobody_but_the_poster_may_refund(
    w3: Web3, escrow: JobEscrow, job: FundedJob, request: pytest.FixtureRequest, who: str
) -> None:
    caller: Sender = request.getfixturevalue(who)
    advance_time(w3, job.deadline - now(w3) + 1)

    with pytest.raises(errors.EscrowNotPoster) as raised:
        escrow.connect(caller).refund(job.id)

    assert raised.value.fields == {"jobId": job.id, "account": caller.address}
    assert escrow.job_of(job.id).remaining == job.amount


def test_refund_of_an_unknown_job_reverts(escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(errors.EscrowUnknownJob):
        escrow.connect(poster).refund(job_id(poster, 2))


def test_after_a_refund_past_the_deadline_payouts_find_nothing_left(
    w3: Web3, escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    advance_time(w3, job.deadline - now(w3) + 1)
    escrow.connect(job.poster).refund(job.id)

    with pytest.raises(errors.EscrowInsufficientJobBalance):
        escrow.connect(operator).release(job.id, [Payout(0, node.address, 1)])


def test_refund_and_withdraw_stay_open_while_paused_and_without_the_operator(
    w3: Web3,
    token: ComputeToken,
    escrow: JobEscrow,
    job: FundedJob,
    operator: Sender,
    admin: Sender,
    node: Sender,
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 10 * TOKENS)])
    # The operator is gone (its role revoked) and the contract is paused.
    escrow.connect(admin).revoke_role(JobEscrow.PAYOUT_ROLE, operator.address)
    escrow.connect(admin).pause()
    advance_time(w3, job.deadline - now(w3) + 1)

    escrow.connect(job.poster).refund(job.id)
    escrow.connect(node).withdraw(10 * TOKENS)

    assert token.balance_of(node.address) == 10 * TOKENS
    assert escrow.job_of(job.id).remaining == 0
    assert token.balance_of(escrow.address) == fee(10 * TOKENS)


# withdraw


def test_a_node_withdraws_its_credit_in_parts(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 10 * TOKENS)])

    receipt = escrow.connect(node).withdraw(4 * TOKENS)
    escrow.connect(node).withdraw(6 * TOKENS)

    assert token.balance_of(node.address) == 10 * TOKENS
    assert escrow.credit_of(node.address) == 0
    (event,) = escrow.events(receipt, "Withdrawn")
    assert event["args"] == {"account": node.address, "amount": 4 * TOKENS}


def test_the_treasury_withdraws_its_fees(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender, treasury: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 40 * TOKENS)])

    escrow.connect(treasury).withdraw(fee(40 * TOKENS))

    assert token.balance_of(treasury.address) == fee(40 * TOKENS)


def test_withdrawing_more_than_the_credit_reverts(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, 10 * TOKENS)])

    with pytest.raises(errors.EscrowInsufficientCredit) as raised:
        escrow.connect(node).withdraw(10 * TOKENS + 1)

    assert raised.value.fields == {"account": node.address, "requested": 10 * TOKENS + 1, "available": 10 * TOKENS}


def test_a_stranger_without_credit_cannot_withdraw(escrow: JobEscrow, job: FundedJob, stranger: Sender) -> None:
    with pytest.raises(errors.EscrowInsufficientCredit):
        escrow.connect(stranger).withdraw(1)


def test_withdrawing_zero_reverts(escrow: JobEscrow, node: Sender) -> None:
    with pytest.raises(errors.EscrowZeroAmount):
        escrow.connect(node).withdraw(0)
