"""release() and close(): credits, the fee, the per-job payout bitmap, re-sent batches, the job's terms, and every
refusal."""

from __future__ import annotations

import pytest
from web3 import Web3

from contracts import errors
from contracts.bindings import ComputeToken, JobEscrow, Payout
from contracts.sender import Sender
from tests.contracts.helpers import MAX_PAYOUT, MAX_PAYOUTS, TOKENS, FundedJob, fee, fund_job, job_id


def test_release_credits_the_payees_and_the_fee_to_the_treasury(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender, other_node: Sender, treasury: Sender
) -> None:
    payouts = [Payout(0, node.address, 10 * TOKENS), Payout(1, other_node.address, 4 * TOKENS)]

    released = escrow.connect(operator).release(job.id, payouts)

    total_fee = fee(10 * TOKENS) + fee(4 * TOKENS)
    assert (released.count, released.amount, released.fee) == (2, 14 * TOKENS, total_fee)
    assert escrow.credit_of(node.address) == 10 * TOKENS
    assert escrow.credit_of(other_node.address) == 4 * TOKENS
    assert escrow.credit_of(treasury.address) == total_fee
    state = escrow.job_of(job.id)
    assert state.released == 14 * TOKENS + total_fee
    assert state.remaining == job.amount - 14 * TOKENS - total_fee
    assert escrow.payout_used(job.id, 0)
    assert escrow.payout_used(job.id, 1)
    assert not escrow.payout_used(job.id, 2)
    (event,) = escrow.events(released.receipt, "PayoutsReleased")
    assert event["args"] == {"jobId": job.id, "count": 2, "amount": 14 * TOKENS, "fee": total_fee}


def test_the_fee_is_rounded_down_on_each_payout(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    # 250 bps of 39 base units is 0.975: each payout's fee rounds down to 0 (on the sum, 78, it would be 1).
    released = escrow.connect(operator).release(job.id, [Payout(0, node.address, 39), Payout(1, node.address, 39)])

    assert (released.amount, released.fee) == (78, 0)
    assert escrow.job_of(job.id).released == 78


def test_a_payout_index_used_twice_pays_once(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender, other_node: Sender
) -> None:
    within = escrow.connect(operator).release(
        job.id, [Payout(5, node.address, 3 * TOKENS), Payout(5, other_node.address, 3 * TOKENS)]
    )
    later = escrow.connect(operator).release(job.id, [Payout(5, other_node.address, 3 * TOKENS)])

    assert (within.count, later.count, later.amount, later.fee) == (1, 0, 0, 0)
    assert escrow.credit_of(node.address) == 3 * TOKENS
    assert escrow.credit_of(other_node.address) == 0
    assert escrow.job_of(job.id).released == 3 * TOKENS + fee(3 * TOKENS)


def test_resending_a_whole_batch_after_success_changes_nothing(
    token: ComputeToken,
    escrow: JobEscrow,
    job: FundedJob,
    operator: Sender,
    node: Sender,
    other_node: Sender,
    treasury: Sender,
) -> None:
    batch = [Payout(i, (node if i % 2 else other_node).address, (i + 1) * TOKENS) for i in range(6)]
    escrow.connect(operator).release(job.id, batch)
    before = (
        escrow.job_of(job.id),
        escrow.credit_of(node.address),
        escrow.credit_of(other_node.address),
        escrow.credit_of(treasury.address),
        token.balance_of(escrow.address),
    )

    again = escrow.connect(operator).release(job.id, batch)

    assert (again.count, again.amount, again.fee) == (0, 0, 0)
    after = (
        escrow.job_of(job.id),
        escrow.credit_of(node.address),
        escrow.credit_of(other_node.address),
        escrow.credit_of(treasury.address),
        token.balance_of(escrow.address),
    )
    assert after == before


def test_a_partly_resent_batch_pays_only_the_new_indexes(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS), Payout(1, node.address, TOKENS)])

    released = escrow.connect(operator).release(job.id, [Payout(i, node.address, TOKENS) for i in range(4)])

    assert (released.count, released.amount) == (2, 2 * TOKENS)
    assert escrow.credit_of(node.address) == 4 * TOKENS


def test_payout_indexes_are_tracked_across_bitmap_words(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, operator: Sender, node: Sender
) -> None:
    job = fund_job(w3, token, escrow, poster, job_id(poster), TOKENS, max_payouts=2**32 - 1)
    indexes = [0, 255, 256, 511, 512, 10**9, 2**32 - 2]

    released = escrow.connect(operator).release(job.id, [Payout(i, node.address, 1) for i in indexes])

    assert released.count == len(indexes)
    assert all(escrow.payout_used(job.id, i) for i in indexes)
    assert not any(escrow.payout_used(job.id, i) for i in (1, 254, 257, 510, 513, 10**9 + 1, 2**32 - 3))


def test_a_batch_that_returns_to_an_earlier_bitmap_word_keeps_every_mark(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    indexes = [0, 300, 1, 301, 0, 300]

    released = escrow.connect(operator).release(job.id, [Payout(i, node.address, TOKENS) for i in indexes])

    assert (released.count, released.amount) == (4, 4 * TOKENS)
    assert all(escrow.payout_used(job.id, i) for i in (0, 1, 300, 301))
    assert escrow.connect(operator).release(job.id, [Payout(i, node.address, TOKENS) for i in indexes]).count == 0


def test_payout_indexes_belong_to_their_job(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    other = fund_job(w3, token, escrow, job.poster, job_id(job.poster, 2), 100 * TOKENS)
    escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS)])

    released = escrow.connect(operator).release(other.id, [Payout(0, node.address, TOKENS)])

    assert released.count == 1
    assert escrow.credit_of(node.address) == 2 * TOKENS


def test_release_that_exactly_empties_the_job_succeeds(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    # amount + 2.5 % fee == the job's whole balance.
    amount = job.amount * 10_000 // 10_250

    escrow.connect(operator).release(job.id, [Payout(0, node.address, amount)])

    assert escrow.job_of(job.id).remaining == job.amount - amount - fee(amount)
    assert escrow.job_of(job.id).remaining < 10


def test_release_beyond_the_remaining_balance_reverts(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    # The payouts alone fit; with the fee on top they do not.
    payouts = [Payout(0, node.address, job.amount // 2), Payout(1, node.address, job.amount // 2)]

    with pytest.raises(errors.EscrowInsufficientJobBalance) as raised:
        escrow.connect(operator).release(job.id, payouts)

    assert raised.value.fields == {
        "jobId": job.id,
        "needed": job.amount + fee(job.amount // 2) * 2,
        "remaining": job.amount,
    }
    assert escrow.credit_of(node.address) == 0
    assert not escrow.payout_used(job.id, 0)


def test_an_amount_too_large_to_compute_a_fee_on_is_refused_by_the_terms(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    # Before the terms this overflowed the fee (Panic 0x11); now no payout gets past maxPayout < 2**96.
    with pytest.raises(errors.EscrowPayoutTooLarge):
        escrow.connect(operator).release(job.id, [Payout(0, node.address, 2**255)])

    assert escrow.credit_of(node.address) == 0


# The job's terms: even the operator's key cannot pay more payouts, or larger ones, than the poster funded for.


def _money(escrow: JobEscrow, token: ComputeToken, job: FundedJob, *accounts: Sender) -> tuple[object, ...]:
    return (
        escrow.job_of(job.id),
        token.balance_of(escrow.address),
        *(escrow.credit_of(a.address) for a in accounts),
        *(token.balance_of(a.address) for a in accounts),
    )


def test_payouts_up_to_the_terms_are_paid(
    w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender, operator: Sender, node: Sender
) -> None:
    job = fund_job(w3, token, escrow, poster, job_id(poster), 100 * TOKENS, max_payouts=3, max_payout=10 * TOKENS)

    released = escrow.connect(operator).release(job.id, [Payout(i, node.address, 10 * TOKENS) for i in range(3)])

    assert (released.count, released.amount, released.fee) == (3, 30 * TOKENS, 3 * fee(10 * TOKENS))
    assert escrow.credit_of(node.address) == 30 * TOKENS


def test_a_batch_with_an_index_beyond_max_payouts_reverts_and_moves_nothing(
    w3: Web3,
    token: ComputeToken,
    escrow: JobEscrow,
    poster: Sender,
    operator: Sender,
    node: Sender,
    treasury: Sender,
) -> None:
    job = fund_job(w3, token, escrow, poster, job_id(poster), 100 * TOKENS, max_payouts=3, max_payout=10 * TOKENS)
    before = _money(escrow, token, job, node, treasury)
    batch = [Payout(0, node.address, TOKENS), Payout(1, node.address, TOKENS), Payout(3, node.address, TOKENS)]

    with pytest.raises(errors.EscrowPayoutIndexOutOfRange) as raised:
        escrow.connect(operator).release(job.id, batch)

    assert raised.value.fields == {"jobId": job.id, "payoutIndex": 3, "maxPayouts": 3}
    assert _money(escrow, token, job, node, treasury) == before
    assert not any(escrow.payout_used(job.id, i) for i in range(4))


def test_a_batch_with_a_payout_above_max_payout_reverts_and_moves_nothing(
    w3: Web3,
    token: ComputeToken,
    escrow: JobEscrow,
    poster: Sender,
    operator: Sender,
    node: Sender,
    treasury: Sender,
) -> None:
    job = fund_job(w3, token, escrow, poster, job_id(poster), 100 * TOKENS, max_payouts=3, max_payout=10 * TOKENS)
    before = _money(escrow, token, job, node, treasury)
    batch = [Payout(0, node.address, 10 * TOKENS), Payout(1, node.address, 10 * TOKENS + 1)]

    with pytest.raises(errors.EscrowPayoutTooLarge) as raised:
        escrow.connect(operator).release(job.id, batch)

    assert raised.value.fields == {
        "jobId": job.id,
        "payoutIndex": 1,
        "amount": 10 * TOKENS + 1,
        "maxPayout": 10 * TOKENS,
    }
    assert _money(escrow, token, job, node, treasury) == before
    assert not escrow.payout_used(job.id, 0)


def test_a_used_index_does_not_smuggle_an_amount_above_the_terms(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS)])

    # Index 0 would be skipped, but the batch is judged as a whole: any entry beyond the terms refuses it.
    with pytest.raises(errors.EscrowPayoutTooLarge):
        escrow.connect(operator).release(
            job.id, [Payout(0, node.address, MAX_PAYOUT + 1), Payout(1, node.address, TOKENS)]
        )

    assert not escrow.payout_used(job.id, 1)
    assert escrow.credit_of(node.address) == TOKENS


def test_the_last_index_allowed_is_max_payouts_minus_one(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender
) -> None:
    assert escrow.connect(operator).release(job.id, [Payout(MAX_PAYOUTS - 1, node.address, TOKENS)]).count == 1

    with pytest.raises(errors.EscrowPayoutIndexOutOfRange):
        escrow.connect(operator).release(job.id, [Payout(MAX_PAYOUTS, node.address, TOKENS)])


@pytest.mark.parametrize("who", ["poster", "stranger", "node", "admin"])
def test_only_the_payout_role_may_release(
    escrow: JobEscrow, job: FundedJob, request: pytest.FixtureRequest, who: str, node: Sender
) -> None:
    caller: Sender = request.getfixturevalue(who)

    with pytest.raises(errors.AccessControlUnauthorizedAccount) as raised:
        escrow.connect(caller).release(job.id, [Payout(0, node.address, TOKENS)])

    assert raised.value.fields == {"account": caller.address, "neededRole": JobEscrow.PAYOUT_ROLE}


def test_release_for_an_unknown_job_reverts(escrow: JobEscrow, operator: Sender, node: Sender) -> None:
    with pytest.raises(errors.EscrowUnknownJob) as raised:
        escrow.connect(operator).release(job_id(node, 9), [Payout(0, node.address, TOKENS)])

    assert raised.value.fields == {"jobId": job_id(node, 9)}


@pytest.mark.parametrize(("indexes", "payees", "amounts"), [(2, 1, 1), (1, 2, 1), (1, 1, 0)])
def test_release_with_lists_of_different_lengths_reverts(
    escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender, indexes: int, payees: int, amounts: int
) -> None:
    with pytest.raises(errors.EscrowLengthMismatch) as raised:
        escrow.connect(operator).release_columns(
            job.id, list(range(indexes)), [node.address] * payees, [TOKENS] * amounts
        )

    assert raised.value.fields == {"payoutIndexes": indexes, "payees": payees, "amounts": amounts}


def test_release_to_the_zero_address_reverts(escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender) -> None:
    zero = "0x" + "00" * 20

    with pytest.raises(errors.EscrowZeroPayee) as raised:
        escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS), Payout(1, zero, TOKENS)])

    assert raised.value.fields == {"jobId": job.id, "payoutIndex": 1}


def test_release_on_a_closed_job_reverts(escrow: JobEscrow, job: FundedJob, operator: Sender, node: Sender) -> None:
    escrow.connect(operator).close(job.id)

    with pytest.raises(errors.EscrowJobClosed):
        escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS)])


def test_release_reverts_while_paused_and_works_again_after(
    escrow: JobEscrow, job: FundedJob, operator: Sender, admin: Sender, node: Sender
) -> None:
    escrow.connect(admin).pause()

    with pytest.raises(errors.EnforcedPause):
        escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS)])

    escrow.connect(admin).unpause()
    assert escrow.connect(operator).release(job.id, [Payout(0, node.address, TOKENS)]).count == 1


def test_an_empty_batch_pays_nothing(escrow: JobEscrow, job: FundedJob, operator: Sender) -> None:
    released = escrow.connect(operator).release(job.id, [])

    assert (released.count, released.amount, released.fee) == (0, 0, 0)
    assert escrow.job_of(job.id).remaining == job.amount


# close


def test_close_marks_the_job_closed(escrow: JobEscrow, job: FundedJob, operator: Sender) -> None:
    receipt = escrow.connect(operator).close(job.id)

    assert escrow.job_of(job.id).closed
    (event,) = escrow.events(receipt, "JobClosed")
    assert event["args"] == {"jobId": job.id}


@pytest.mark.parametrize("who", ["poster", "stranger", "admin"])
def test_only_the_payout_role_may_close(
    escrow: JobEscrow, job: FundedJob, request: pytest.FixtureRequest, who: str
) -> None:
    caller: Sender = request.getfixturevalue(who)

    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        escrow.connect(caller).close(job.id)

    assert not escrow.job_of(job.id).closed


def test_close_of_an_unknown_job_reverts(escrow: JobEscrow, operator: Sender) -> None:
    with pytest.raises(errors.EscrowUnknownJob):
        escrow.connect(operator).close(job_id(operator, 9))


def test_closing_a_job_twice_reverts(escrow: JobEscrow, job: FundedJob, operator: Sender) -> None:
    escrow.connect(operator).close(job.id)

    with pytest.raises(errors.EscrowJobClosed):
        escrow.connect(operator).close(job.id)
