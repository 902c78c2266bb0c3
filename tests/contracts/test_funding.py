"""fund() and fundWithPermit(): who becomes the poster, top-ups, deadlines, permits, and every refusal."""

from __future__ import annotations

import pytest
from web3 import Web3

from contracts import errors
from contracts.bindings import ComputeToken, JobEscrow
from contracts.sender import Sender
from tests.contracts.helpers import DAY, JOB_ID, TOKENS, FundedJob, fund_job, now


def test_the_first_fund_makes_the_caller_the_poster_and_pulls_the_tokens(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    before = token.balance_of(poster.address)
    deadline = now(w3) + DAY
    token.connect(poster).approve(escrow.address, 500 * TOKENS)

    receipt = escrow.connect(poster).fund(JOB_ID, 500 * TOKENS, deadline)

    job = escrow.job_of(JOB_ID)
    assert (job.poster, job.funded, job.released, job.remaining, job.deadline, job.closed) == (
        poster.address,
        500 * TOKENS,
        0,
        500 * TOKENS,
        deadline,
        False,
    )
    assert token.balance_of(poster.address) == before - 500 * TOKENS
    assert token.balance_of(escrow.address) == 500 * TOKENS
    (event,) = escrow.events(receipt, "JobFunded")
    assert event["args"] == {"jobId": JOB_ID, "poster": poster.address, "amount": 500 * TOKENS, "deadline": deadline}


def test_a_top_up_by_the_poster_adds_to_the_job_and_moves_the_deadline_later(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    later = job.deadline + DAY
    token.connect(job.poster).approve(escrow.address, 200 * TOKENS)

    escrow.connect(job.poster).fund(job.id, 200 * TOKENS, later)

    state = escrow.job_of(job.id)
    assert (state.funded, state.remaining, state.deadline) == (
        job.amount + 200 * TOKENS,
        job.amount + 200 * TOKENS,
        later,
    )


def test_a_top_up_may_keep_the_deadline_but_not_move_it_earlier(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    token.connect(job.poster).approve(escrow.address, 2 * TOKENS)
    escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline)

    with pytest.raises(errors.EscrowDeadlineMovedEarlier) as raised:
        escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline - 1)

    assert raised.value.fields == {
        "jobId": job.id,
        "currentDeadline": job.deadline,
        "requestedDeadline": job.deadline - 1,
    }
    assert escrow.job_of(job.id).funded == job.amount + TOKENS


def test_someone_else_cannot_top_up_a_posters_job(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, stranger: Sender
) -> None:
    token.connect(stranger).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowNotPoster) as raised:
        escrow.connect(stranger).fund(job.id, TOKENS, job.deadline)

    assert raised.value.fields == {"jobId": job.id, "account": stranger.address}


def test_fund_with_a_deadline_that_is_not_in_the_future_reverts(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowDeadlineInPast):
        escrow.connect(poster).fund(JOB_ID, TOKENS, now(w3) - 1)

    assert not escrow.job_of(JOB_ID).exists


def test_fund_of_zero_tokens_reverts(w3: Web3, escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(errors.EscrowZeroAmount):
        escrow.connect(poster).fund(JOB_ID, 0, now(w3) + DAY)


def test_fund_without_an_allowance_reverts_with_the_tokens_error(w3: Web3, escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(errors.ERC20InsufficientAllowance) as raised:
        escrow.connect(poster).fund(JOB_ID, TOKENS, now(w3) + DAY)

    assert raised.value.fields == {"spender": escrow.address, "allowance": 0, "needed": TOKENS}
    assert not escrow.job_of(JOB_ID).exists


def test_a_closed_job_cannot_be_topped_up(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender
) -> None:
    escrow.connect(operator).close(job.id)
    token.connect(job.poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowJobClosed):
        escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline)


def test_fund_reverts_while_paused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)
    escrow.connect(admin).pause()

    with pytest.raises(errors.EnforcedPause):
        escrow.connect(poster).fund(JOB_ID, TOKENS, now(w3) + DAY)

    escrow.connect(admin).unpause()
    escrow.connect(poster).fund(JOB_ID, TOKENS, now(w3) + DAY)
    assert escrow.job_of(JOB_ID).remaining == TOKENS


def test_a_job_total_beyond_128_bits_reverts(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    huge = 2**128
    token.connect(admin).mint(poster.address, huge)
    token.connect(poster).approve(escrow.address, huge)

    with pytest.raises(errors.SafeCastOverflowedUintDowncast) as raised:
        escrow.connect(poster).fund(JOB_ID, huge, now(w3) + DAY)

    assert raised.value.fields == {"bits": 128, "value": huge}


# fundWithPermit


def test_fund_with_permit_funds_in_one_transaction_without_an_approve(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    deadline = now(w3) + DAY
    permit = token.sign_permit(poster, escrow.address, 300 * TOKENS, deadline=now(w3) + 600)

    escrow.connect(poster).fund_with_permit(JOB_ID, 300 * TOKENS, deadline, permit)

    job = escrow.job_of(JOB_ID)
    assert (job.poster, job.funded, job.remaining) == (poster.address, 300 * TOKENS, 300 * TOKENS)
    assert token.allowance(poster.address, escrow.address) == 0
    assert token.nonces(poster.address) == 1


def test_a_permit_signed_by_another_key_is_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, stranger: Sender
) -> None:
    # The stranger's own permit, handed in by the poster: it does not recover to the poster.
    forged = token.sign_permit(stranger, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.ERC2612InvalidSigner) as raised:
        escrow.connect(poster).fund_with_permit(JOB_ID, TOKENS, now(w3) + DAY, forged)

    assert raised.value.fields["owner"] == poster.address
    assert raised.value.fields["signer"] != poster.address
    assert token.balance_of(escrow.address) == 0


def test_a_permit_for_a_smaller_amount_is_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.ERC2612InvalidSigner):
        escrow.connect(poster).fund_with_permit(JOB_ID, 2 * TOKENS, now(w3) + DAY, permit)


def test_an_expired_permit_is_refused(w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender) -> None:
    permit_deadline = now(w3) - 1
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=permit_deadline)

    with pytest.raises(errors.ERC2612ExpiredSignature) as raised:
        escrow.connect(poster).fund_with_permit(JOB_ID, TOKENS, now(w3) + DAY, permit)

    assert raised.value.fields == {"deadline": permit_deadline}


def test_a_permit_someone_submitted_first_still_funds_the_job(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, stranger: Sender
) -> None:
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=now(w3) + 600)
    # A front-runner copies the signature from the mempool and spends it on the token directly.
    stranger.send(
        to=token.address,
        data=token.contract.encode_abi(
            "permit", args=[poster.address, escrow.address, TOKENS, permit.deadline, permit.v, permit.r, permit.s]
        ),
    )

    escrow.connect(poster).fund_with_permit(JOB_ID, TOKENS, now(w3) + DAY, permit)

    assert escrow.job_of(JOB_ID).remaining == TOKENS


def test_fund_with_permit_reverts_while_paused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=now(w3) + 600)
    escrow.connect(admin).pause()

    with pytest.raises(errors.EnforcedPause):
        escrow.connect(poster).fund_with_permit(JOB_ID, TOKENS, now(w3) + DAY, permit)


def test_a_second_job_by_the_same_poster_is_kept_apart(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    other = fund_job(w3, token, escrow, job.poster, bytes(31) + b"\x07", 7 * TOKENS, days=3)

    assert escrow.job_of(job.id).remaining == job.amount
    assert escrow.job_of(other.id).remaining == 7 * TOKENS
    assert token.balance_of(escrow.address) == job.amount + 7 * TOKENS
