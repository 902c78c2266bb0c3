"""fund() and fundWithPermit(): poster-bound ids, the terms fixed at funding, top-ups, deadlines, permits, and every
refusal."""

from __future__ import annotations

import uuid

import pytest
from web3 import Web3

from contracts import errors
from contracts.bindings import ComputeToken, Job, JobEscrow, escrow_job_id, job_key, poster_of_job_id
from contracts.sender import Sender
from tests.contracts.helpers import DAY, MAX_PAYOUT, MAX_PAYOUTS, TOKENS, FundedJob, fund_job, job_id, now

TERMS = {"max_payouts": MAX_PAYOUTS, "max_payout": MAX_PAYOUT}


def test_the_first_fund_makes_the_caller_the_poster_fixes_the_terms_and_pulls_the_tokens(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    before = token.balance_of(poster.address)
    deadline = now(w3) + DAY
    token.connect(poster).approve(escrow.address, 500 * TOKENS)

    receipt = escrow.connect(poster).fund(
        job_id(poster), 500 * TOKENS, deadline, max_payouts=40, max_payout=20 * TOKENS
    )

    assert escrow.job_of(job_id(poster)) == Job(
        poster=poster.address,
        funded=500 * TOKENS,
        released=0,
        remaining=500 * TOKENS,
        deadline=deadline,
        closed=False,
        max_payouts=40,
        max_payout=20 * TOKENS,
    )
    assert token.balance_of(poster.address) == before - 500 * TOKENS
    assert token.balance_of(escrow.address) == 500 * TOKENS
    (event,) = escrow.events(receipt, "JobFunded")
    assert event["args"] == {
        "jobId": job_id(poster),
        "poster": poster.address,
        "amount": 500 * TOKENS,
        "deadline": deadline,
        "maxPayouts": 40,
        "maxPayout": 20 * TOKENS,
    }


def test_an_escrow_job_id_is_the_posters_address_and_a_twelve_byte_salt(poster: Sender) -> None:
    salt = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0").bytes[:12]

    key = escrow_job_id(poster.address.lower(), salt)

    assert key == bytes.fromhex(poster.address[2:]) + salt
    assert poster_of_job_id(key) == poster.address
    with pytest.raises(ValueError, match="12 bytes"):
        escrow_job_id(poster.address, bytes(16))


def test_a_uuid_is_no_longer_taken_as_a_job_id(escrow: JobEscrow) -> None:
    with pytest.raises(TypeError, match="escrow_job_id"):
        job_key(uuid.uuid4())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        job_key(bytes(16))


# Poster-bound ids: nobody can take a poster's id first.


def test_a_stranger_cannot_fund_a_posters_id_first_and_the_poster_still_can(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, stranger: Sender
) -> None:
    key = job_id(poster)
    stranger_before = token.balance_of(stranger.address)
    token.connect(stranger).approve(escrow.address, TOKENS)

    # The front-runner copies the poster's id from the mempool and funds it with 1 base unit, with terms of its
    # own: refused, the id stays the poster's.
    with pytest.raises(errors.EscrowJobIdNotPoster) as raised:
        escrow.connect(stranger).fund(key, 1, now(w3) + DAY, max_payouts=1, max_payout=2**96 - 1)

    assert raised.value.fields == {"jobId": key, "account": stranger.address}
    assert not escrow.job_of(key).exists
    assert token.balance_of(stranger.address) == stranger_before
    funded = fund_job(w3, token, escrow, poster, key, 10 * TOKENS)
    assert escrow.job_of(key).poster == poster.address
    assert escrow.job_of(key).remaining == funded.amount


def test_a_stranger_cannot_take_a_posters_id_with_a_permit_either(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, stranger: Sender
) -> None:
    permit = token.sign_permit(stranger, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.EscrowJobIdNotPoster):
        escrow.connect(stranger).fund_with_permit(job_id(poster), TOKENS, now(w3) + DAY, permit, **TERMS)

    assert not escrow.job_of(job_id(poster)).exists
    assert token.balance_of(escrow.address) == 0


def test_an_id_without_an_address_in_front_cannot_be_funded(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)
    old_style = bytes(16) + uuid.uuid4().bytes  # the former UUID-padded ids: the zero address "owns" them

    with pytest.raises(errors.EscrowJobIdNotPoster):
        escrow.connect(poster).fund(old_style, TOKENS, now(w3) + DAY, **TERMS)


# Terms.


@pytest.mark.parametrize(("max_payouts", "max_payout"), [(0, TOKENS), (10, 0), (0, 0)])
def test_zero_terms_are_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, max_payouts: int, max_payout: int
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowZeroTerms) as raised:
        escrow.connect(poster).fund(
            job_id(poster), TOKENS, now(w3) + DAY, max_payouts=max_payouts, max_payout=max_payout
        )

    assert raised.value.fields == {"maxPayouts": max_payouts, "maxPayout": max_payout}
    assert not escrow.job_of(job_id(poster)).exists


@pytest.mark.parametrize(
    ("max_payouts", "max_payout"),
    [(MAX_PAYOUTS + 1, MAX_PAYOUT), (MAX_PAYOUTS, MAX_PAYOUT + 1), (MAX_PAYOUTS - 1, MAX_PAYOUT - 1)],
)
def test_a_top_up_with_other_terms_is_refused(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, max_payouts: int, max_payout: int
) -> None:
    token.connect(job.poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowTermsMismatch) as raised:
        escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline, max_payouts=max_payouts, max_payout=max_payout)

    assert raised.value.fields == {
        "jobId": job.id,
        "maxPayouts": MAX_PAYOUTS,
        "maxPayout": MAX_PAYOUT,
        "requestedMaxPayouts": max_payouts,
        "requestedMaxPayout": max_payout,
    }
    state = escrow.job_of(job.id)
    assert (state.funded, state.max_payouts, state.max_payout) == (job.amount, MAX_PAYOUTS, MAX_PAYOUT)


def test_a_top_up_with_a_permit_and_other_terms_is_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    permit = token.sign_permit(job.poster, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.EscrowTermsMismatch):
        escrow.connect(job.poster).fund_with_permit(
            job.id, TOKENS, job.deadline, permit, max_payouts=MAX_PAYOUTS, max_payout=2 * MAX_PAYOUT
        )

    assert escrow.job_of(job.id).funded == job.amount


def test_the_largest_terms_fit(w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender) -> None:
    job = fund_job(w3, token, escrow, poster, job_id(poster), TOKENS, max_payouts=2**32 - 1, max_payout=2**96 - 1)

    state = escrow.job_of(job.id)
    assert (state.max_payouts, state.max_payout) == (2**32 - 1, 2**96 - 1)


def test_the_binding_refuses_terms_the_contract_cannot_hold(w3: Web3, escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(ValueError, match="max_payout must be"):
        escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) + DAY, max_payouts=1, max_payout=2**96)
    with pytest.raises(ValueError, match="max_payouts must be"):
        escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) + DAY, max_payouts=2**32, max_payout=1)


def test_a_top_up_by_the_poster_adds_to_the_job_and_moves_the_deadline_later(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    later = job.deadline + DAY
    token.connect(job.poster).approve(escrow.address, 200 * TOKENS)

    escrow.connect(job.poster).fund(job.id, 200 * TOKENS, later, **TERMS)

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
    escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline, **TERMS)

    with pytest.raises(errors.EscrowDeadlineMovedEarlier) as raised:
        escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline - 1, **TERMS)

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
        escrow.connect(stranger).fund(job.id, TOKENS, job.deadline, **TERMS)

    assert raised.value.fields == {"jobId": job.id, "account": stranger.address}


def test_fund_with_a_deadline_that_is_not_in_the_future_reverts(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowDeadlineInPast):
        escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) - 1, **TERMS)

    assert not escrow.job_of(job_id(poster)).exists


def test_fund_of_zero_tokens_reverts(w3: Web3, escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(errors.EscrowZeroAmount):
        escrow.connect(poster).fund(job_id(poster), 0, now(w3) + DAY, **TERMS)


def test_fund_without_an_allowance_reverts_with_the_tokens_error(w3: Web3, escrow: JobEscrow, poster: Sender) -> None:
    with pytest.raises(errors.ERC20InsufficientAllowance) as raised:
        escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) + DAY, **TERMS)

    assert raised.value.fields == {"spender": escrow.address, "allowance": 0, "needed": TOKENS}
    assert not escrow.job_of(job_id(poster)).exists


def test_a_closed_job_cannot_be_topped_up(
    token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender
) -> None:
    escrow.connect(operator).close(job.id)
    token.connect(job.poster).approve(escrow.address, TOKENS)

    with pytest.raises(errors.EscrowJobClosed):
        escrow.connect(job.poster).fund(job.id, TOKENS, job.deadline, **TERMS)


def test_fund_reverts_while_paused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    token.connect(poster).approve(escrow.address, TOKENS)
    escrow.connect(admin).pause()

    with pytest.raises(errors.EnforcedPause):
        escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) + DAY, **TERMS)

    escrow.connect(admin).unpause()
    escrow.connect(poster).fund(job_id(poster), TOKENS, now(w3) + DAY, **TERMS)
    assert escrow.job_of(job_id(poster)).remaining == TOKENS


def test_a_job_total_beyond_128_bits_reverts(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    huge = 2**128
    token.connect(admin).mint(poster.address, huge)
    token.connect(poster).approve(escrow.address, huge)

    with pytest.raises(errors.SafeCastOverflowedUintDowncast) as raised:
        escrow.connect(poster).fund(job_id(poster), huge, now(w3) + DAY, **TERMS)

    assert raised.value.fields == {"bits": 128, "value": huge}


# fundWithPermit


def test_fund_with_permit_funds_in_one_transaction_without_an_approve(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    deadline = now(w3) + DAY
    permit = token.sign_permit(poster, escrow.address, 300 * TOKENS, deadline=now(w3) + 600)

    escrow.connect(poster).fund_with_permit(job_id(poster), 300 * TOKENS, deadline, permit, **TERMS)

    job = escrow.job_of(job_id(poster))
    assert (job.poster, job.funded, job.remaining) == (poster.address, 300 * TOKENS, 300 * TOKENS)
    assert token.allowance(poster.address, escrow.address) == 0
    assert token.nonces(poster.address) == 1


def test_a_permit_signed_by_another_key_is_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, stranger: Sender
) -> None:
    # The stranger's own permit, handed in by the poster: it does not recover to the poster.
    forged = token.sign_permit(stranger, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.ERC2612InvalidSigner) as raised:
        escrow.connect(poster).fund_with_permit(job_id(poster), TOKENS, now(w3) + DAY, forged, **TERMS)

    assert raised.value.fields["owner"] == poster.address
    assert raised.value.fields["signer"] != poster.address
    assert token.balance_of(escrow.address) == 0


def test_a_permit_for_a_smaller_amount_is_refused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender
) -> None:
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=now(w3) + 600)

    with pytest.raises(errors.ERC2612InvalidSigner):
        escrow.connect(poster).fund_with_permit(job_id(poster), 2 * TOKENS, now(w3) + DAY, permit, **TERMS)


def test_an_expired_permit_is_refused(w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender) -> None:
    permit_deadline = now(w3) - 1
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=permit_deadline)

    with pytest.raises(errors.ERC2612ExpiredSignature) as raised:
        escrow.connect(poster).fund_with_permit(job_id(poster), TOKENS, now(w3) + DAY, permit, **TERMS)

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

    escrow.connect(poster).fund_with_permit(job_id(poster), TOKENS, now(w3) + DAY, permit, **TERMS)

    assert escrow.job_of(job_id(poster)).remaining == TOKENS


def test_fund_with_permit_reverts_while_paused(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, admin: Sender
) -> None:
    permit = token.sign_permit(poster, escrow.address, TOKENS, deadline=now(w3) + 600)
    escrow.connect(admin).pause()

    with pytest.raises(errors.EnforcedPause):
        escrow.connect(poster).fund_with_permit(job_id(poster), TOKENS, now(w3) + DAY, permit, **TERMS)


def test_a_second_job_by_the_same_poster_is_kept_apart(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob
) -> None:
    other = fund_job(w3, token, escrow, job.poster, job_id(job.poster, 7), 7 * TOKENS, days=3)

    assert escrow.job_of(job.id).remaining == job.amount
    assert escrow.job_of(other.id).remaining == 7 * TOKENS
    assert token.balance_of(escrow.address) == job.amount + 7 * TOKENS
