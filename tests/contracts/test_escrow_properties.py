"""Property-based: random sequences of fund / top-up / release / close / refund / withdraw / pause / time travel
by several actors, run against the real escrow and a Python model of it, with the attacks the funding rules stop
mixed in: funding someone else's job id first, topping up with other terms, and payout batches beyond a job's
terms (more payouts, or larger ones, than it was funded for).

Every step's outcome (success or the exact custom error) must match the model; after every step the chain must
equal the model, `token.balanceOf(escrow) == Σ remaining + Σ credit` must hold, no account may have withdrawn
more than it was credited, and no job may have paid out and refunded more than its poster funded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.types import RPCEndpoint

from contracts import devchain, errors
from contracts.bindings import ComputeToken, Job, JobEscrow, Payout, escrow_job_id
from contracts.sender import Sender
from tests.contracts.helpers import FEE_BPS, Actors, advance_time, now

HOUR = 3600
DAY = 24 * HOUR
# Deadlines sit half an hour off the whole hours that time travel moves by, so "is the deadline past?" never
# depends on the few seconds between reading the clock and mining the next block.
HALF_HOUR = HOUR // 2
POSTERS = ("poster", "other_poster")
# Who else tries to fund or refund a job (the poster themselves is drawn more often).
FUNDERS = (*POSTERS, "stranger")
PAYEES = ("node", "other_node", "poster", "treasury")
WITHDRAWERS = ("node", "other_node", "poster", "treasury", "stranger")
# Terms drawn per job: index limits around a bitmap word's edge (the batches use indexes 0-6 and 254-258), and
# payout limits around the amounts the batches draw (up to 2e6).
MAX_PAYOUTS = st.one_of(st.integers(1, 8), st.integers(250, 300))
MAX_PAYOUT = st.one_of(st.integers(1, 10**6), st.just(2 * 10**6))


@dataclass
class JobModel:
    id: bytes
    poster: str
    deadline: int
    max_payouts: int
    max_payout: int
    funded: int = 0
    released: int = 0
    remaining: int = 0
    refunded: int = 0
    closed: bool = False
    used: set[int] = field(default_factory=set)


@dataclass
class Ledger:
    """What each actor put in and took out, by successful transactions."""

    funded: dict[str, int] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    credited: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=dict)

    def add(self, book: dict[str, int], who: str, amount: int) -> None:
        book[who] = book.get(who, 0) + amount


class EscrowMachine(RuleBasedStateMachine):
    w3: Web3
    token: ComputeToken
    escrow: JobEscrow
    actors: Actors

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
        self.model_jobs: dict[bytes, JobModel] = {}
        self.credits: dict[str, int] = {}
        self.ledger = Ledger()
        self.paused = False
        self.ids = itertools.count(1)
        self.balances_at_start = {name: self.token.balance_of(self.sender(name).address) for name in self._names()}

    def teardown(self) -> None:
        assert self.w3.provider.make_request(RPCEndpoint("evm_revert"), [self.snapshot])["result"] is True
        for sender in self.actors.all():
            sender.forget_nonce()

    # Helpers.
    def _names(self) -> list[str]:
        return list(Actors.__dataclass_fields__)

    def sender(self, name: str) -> Sender:
        sender: Sender = getattr(self.actors, name)
        return sender

    def new_job_id(self, poster: str) -> bytes:
        return escrow_job_id(self.sender(poster).address, next(self.ids).to_bytes(12, "big"))

    def money(self) -> tuple[int, ...]:
        """Every balance and credit the escrow moves: must be unchanged by a refused call."""
        return (
            self.token.balance_of(self.escrow.address),
            *(self.token.balance_of(self.sender(name).address) for name in self._names()),
            *(self.escrow.credit_of(self.sender(name).address) for name in self._names()),
        )

    def expect(self, error: type[errors.ContractRevert] | None, action: Callable[[], Any]) -> bool:
        """Run `action`; it must succeed when `error` is None, else raise exactly that error."""
        if error is None:
            action()
            return True
        with pytest.raises(error):
            action()
        return False

    # Rules. Hypothesis picks among them evenly, so the common operations take a biased "who" rather than a
    # rule of their own for each kind of caller.
    @initialize(
        target=jobs,
        amounts=st.tuples(st.integers(10**6, 10**8), st.integers(1, 10**8)),
        terms=st.tuples(MAX_PAYOUTS, MAX_PAYOUT, MAX_PAYOUTS, MAX_PAYOUT),
    )
    def two_posters_fund_a_job_each(self, amounts: tuple[int, int], terms: tuple[int, int, int, int]) -> Any:
        first = self.fund_a_new_job("poster", amounts[0], 1, False, terms[0], terms[1])
        second = self.fund_a_new_job("other_poster", amounts[1], 2, True, terms[2], terms[3])
        return multiple(first, second)

    @rule(
        target=jobs,
        poster=st.sampled_from(POSTERS),
        amount=st.integers(1, 10**8),
        days=st.integers(1, 3),
        with_permit=st.booleans(),
        max_payouts=MAX_PAYOUTS,
        max_payout=MAX_PAYOUT,
    )
    def fund_a_new_job(
        self, poster: str, amount: int, days: int, with_permit: bool, max_payouts: int, max_payout: int
    ) -> bytes:
        job_id = self.new_job_id(poster)
        deadline = now(self.w3) + days * DAY + HALF_HOUR
        sender = self.sender(poster)
        escrow = self.escrow.connect(sender)
        terms = {"max_payouts": max_payouts, "max_payout": max_payout}
        if with_permit:
            permit = self.token.sign_permit(sender, self.escrow.address, amount, deadline=now(self.w3) + HOUR)
            action: Callable[[], Any] = lambda: escrow.fund_with_permit(job_id, amount, deadline, permit, **terms)  # noqa: E731
        else:
            self.token.connect(sender).approve(self.escrow.address, amount)
            action = lambda: escrow.fund(job_id, amount, deadline, **terms)  # noqa: E731
        if self.expect(errors.EnforcedPause if self.paused else None, action):
            self.model_jobs[job_id] = JobModel(job_id, poster, deadline, max_payouts, max_payout, amount, 0, amount)
            self.ledger.add(self.ledger.funded, poster, amount)
        return job_id

    @rule(
        target=jobs,
        victim=st.sampled_from(POSTERS),
        attacker=st.sampled_from(("stranger", "other_poster", "poster", "operator")),
        with_permit=st.booleans(),
        amount=st.integers(1, 10**7),
    )
    def someone_funds_a_posters_id_first(self, victim: str, attacker: str, with_permit: bool, amount: int) -> bytes:
        """The front-run: another account funds the id the victim is about to fund. It must be refused and move
        nothing; the victim's own fund then works."""
        job_id = self.new_job_id(victim)
        if attacker == victim:
            attacker = "stranger"
        sender = self.sender(attacker)
        escrow = self.escrow.connect(sender)
        deadline = now(self.w3) + DAY + HALF_HOUR
        # The attacker's own terms: a single payout that may take everything.
        terms = {"max_payouts": 1, "max_payout": 2**96 - 1}
        if with_permit:
            permit = self.token.sign_permit(sender, self.escrow.address, amount, deadline=now(self.w3) + HOUR)
            action: Callable[[], Any] = lambda: escrow.fund_with_permit(job_id, amount, deadline, permit, **terms)  # noqa: E731
        else:
            self.token.connect(sender).approve(self.escrow.address, amount)
            action = lambda: escrow.fund(job_id, amount, deadline, **terms)  # noqa: E731
        before = self.money()
        self.expect(errors.EscrowJobIdNotPoster, action)
        assert self.money() == before
        assert not self.escrow.job_of(job_id).exists
        sender_escrow = self.escrow.connect(self.sender(victim))
        self.token.connect(self.sender(victim)).approve(self.escrow.address, amount)
        sender_escrow.fund(job_id, amount, deadline, max_payouts=3, max_payout=amount)
        self.model_jobs[job_id] = JobModel(job_id, victim, deadline, 3, amount, amount, 0, amount)
        self.ledger.add(self.ledger.funded, victim, amount)
        return job_id

    @rule(
        job_id=jobs,
        who=st.sampled_from(["the poster"] * 3 + list(FUNDERS)),
        amount=st.integers(0, 10**7),
        shift_days=st.integers(-1, 1),
        terms=st.sampled_from(["the same"] * 4 + ["more payouts", "larger payouts", "fewer payouts", "zero"]),
    )
    def top_up(self, job_id: bytes, who: str, amount: int, shift_days: int, terms: str = "the same") -> None:
        job = self.model_jobs.get(job_id)
        if job is None:  # its funding was refused (paused)
            return
        funder = job.poster if who == "the poster" else who
        deadline = job.deadline + shift_days * DAY
        max_payouts, max_payout = {
            "the same": (job.max_payouts, job.max_payout),
            "more payouts": (job.max_payouts + 1, job.max_payout),
            "larger payouts": (job.max_payouts, job.max_payout + 1),
            "fewer payouts": (job.max_payouts - 1, job.max_payout),
            "zero": (job.max_payouts, 0),
        }[terms]
        sender = self.sender(funder)
        self.token.connect(sender).approve(self.escrow.address, amount)
        error: type[errors.ContractRevert] | None = None
        if self.paused:
            error = errors.EnforcedPause
        elif amount == 0:
            error = errors.EscrowZeroAmount
        elif deadline <= now(self.w3):
            error = errors.EscrowDeadlineInPast
        elif max_payouts == 0 or max_payout == 0:
            error = errors.EscrowZeroTerms
        elif funder != job.poster:
            error = errors.EscrowNotPoster
        elif job.closed:
            error = errors.EscrowJobClosed
        elif deadline < job.deadline:
            error = errors.EscrowDeadlineMovedEarlier
        elif (max_payouts, max_payout) != (job.max_payouts, job.max_payout):
            error = errors.EscrowTermsMismatch
        escrow = self.escrow.connect(sender)
        if self.expect(
            error, lambda: escrow.fund(job_id, amount, deadline, max_payouts=max_payouts, max_payout=max_payout)
        ):
            job.deadline = deadline
            job.funded += amount
            job.remaining += amount
            self.ledger.add(self.ledger.funded, funder, amount)

    @rule(
        job_id=jobs,
        payouts=st.lists(
            st.tuples(
                st.one_of(st.integers(0, 6), st.integers(254, 258)),
                st.sampled_from(PAYEES),
                st.integers(0, 2 * 10**6),
            ),
            max_size=6,
        ),
        caller=st.sampled_from(["operator"] * 9 + ["stranger"]),
        within_terms=st.sampled_from([True, True, True, False]),
    )
    def release(
        self, job_id: bytes, payouts: list[tuple[int, str, int]], caller: str, within_terms: bool = False
    ) -> None:
        job = self.model_jobs.get(job_id)
        if job is None:
            return
        if within_terms:
            # Mostly batches the marketplace would send; the rest test the terms (and the attack rule below).
            payouts = [
                (index % job.max_payouts, payee, min(amount, job.max_payout)) for index, payee, amount in payouts
            ]
        batch = [Payout(index, self.sender(payee).address, amount) for index, payee, amount in payouts]
        fresh: list[tuple[int, str, int]] = []
        seen = set(job.used)
        for index, payee, amount in payouts:
            if index not in seen:
                seen.add(index)
                fresh.append((index, payee, amount))
        total_fee = sum(amount * FEE_BPS // 10_000 for _, _, amount in fresh)
        total = sum(amount for _, _, amount in fresh) + total_fee
        # The first entry beyond the terms (used or not) refuses the whole batch.
        beyond_terms: type[errors.ContractRevert] | None = None
        for index, _, amount in payouts:
            if index >= job.max_payouts:
                beyond_terms = errors.EscrowPayoutIndexOutOfRange
            elif amount > job.max_payout:
                beyond_terms = errors.EscrowPayoutTooLarge
            if beyond_terms is not None:
                break
        error: type[errors.ContractRevert] | None = None
        if caller != "operator":
            error = errors.AccessControlUnauthorizedAccount
        elif self.paused:
            error = errors.EnforcedPause
        elif job.closed:
            error = errors.EscrowJobClosed
        elif beyond_terms is not None:
            error = beyond_terms
        elif total > job.remaining:
            error = errors.EscrowInsufficientJobBalance
        outcome: list[Any] = []
        escrow = self.escrow.connect(self.sender(caller))
        if self.expect(error, lambda: outcome.append(escrow.release(job_id, batch))):
            (released,) = outcome
            assert (released.count, released.fee) == (len(fresh), total_fee)
            job.used |= seen
            job.released += total
            job.remaining -= total
            for _, payee, amount in fresh:
                self.credits[payee] = self.credits.get(payee, 0) + amount
                self.ledger.add(self.ledger.credited, payee, amount)
            self.credits["treasury"] = self.credits.get("treasury", 0) + total_fee
            self.ledger.add(self.ledger.credited, "treasury", total_fee)
            # Re-sending the same batch (a settlement worker that crashed after sending) pays nothing.
            if not self.paused:
                again = escrow.release(job_id, batch)
                assert (again.count, again.amount, again.fee) == (0, 0, 0)

    @rule(
        job_id=jobs,
        valid=st.lists(st.tuples(st.integers(0, 6), st.sampled_from(PAYEES)), max_size=3),
        attack=st.sampled_from(["index = maxPayouts", "index far beyond", "amount = maxPayout + 1", "huge amount"]),
        where=st.integers(0, 3),
    )
    def the_operator_pays_beyond_the_terms(
        self, job_id: bytes, valid: list[tuple[int, str]], attack: str, where: int
    ) -> None:
        """The operator key (compromised, or a bug) sends a batch with one entry beyond the job's terms among
        payouts that would be fine: the batch must revert and move nothing, not even its valid entries."""
        job = self.model_jobs.get(job_id)
        if job is None or job.closed:
            return
        payouts = [(index % job.max_payouts, payee, 1) for index, payee in valid]
        bad = {
            "index = maxPayouts": (job.max_payouts, "node", 1),
            "index far beyond": (2**256 - 1, "node", 1),
            "amount = maxPayout + 1": (0, "node", job.max_payout + 1),
            "huge amount": (job.max_payouts - 1, "node", 2**255),
        }[attack]
        payouts.insert(min(where, len(payouts)), bad)
        error = errors.EscrowPayoutIndexOutOfRange if attack.startswith("index") else errors.EscrowPayoutTooLarge
        before = self.money()
        escrow = self.escrow.connect(self.sender("operator"))
        batch = [Payout(index, self.sender(payee).address, amount) for index, payee, amount in payouts]
        with pytest.raises(error) as raised:
            escrow.release(job_id, batch)
        assert (raised.value.fields["jobId"], raised.value.fields["payoutIndex"]) == (job_id, bad[0])
        assert self.money() == before

    @rule(job_id=jobs, caller=st.sampled_from(["operator", "operator", "stranger"]))
    def close(self, job_id: bytes, caller: str) -> None:
        job = self.model_jobs.get(job_id)
        if job is None:
            return
        error: type[errors.ContractRevert] | None = None
        if caller != "operator":
            error = errors.AccessControlUnauthorizedAccount
        elif job.closed:
            error = errors.EscrowJobClosed
        if self.expect(error, lambda: self.escrow.connect(self.sender(caller)).close(job_id)):
            job.closed = True

    @rule(job_id=jobs, who=st.sampled_from(["the poster"] * 3 + list(FUNDERS)))
    def refund(self, job_id: bytes, who: str) -> None:
        job = self.model_jobs.get(job_id)
        if job is None:
            return
        refunder = job.poster if who == "the poster" else who
        error: type[errors.ContractRevert] | None = None
        if refunder != job.poster:
            error = errors.EscrowNotPoster
        elif not job.closed and now(self.w3) <= job.deadline:
            error = errors.EscrowRefundTooEarly
        elif job.remaining == 0:
            error = errors.EscrowNothingToRefund
        if self.expect(error, lambda: self.escrow.connect(self.sender(refunder)).refund(job_id)):
            job.refunded += job.remaining
            self.ledger.add(self.ledger.refunded, refunder, job.remaining)
            job.remaining = 0

    @rule(who=st.sampled_from(WITHDRAWERS), percent=st.integers(0, 100) | st.integers(101, 120))
    def withdraw(self, who: str, percent: int) -> None:
        credit = self.credits.get(who, 0)
        amount = credit * percent // 100 if credit else percent
        error: type[errors.ContractRevert] | None = None
        if amount == 0:
            error = errors.EscrowZeroAmount
        elif amount > credit:
            error = errors.EscrowInsufficientCredit
        if self.expect(error, lambda: self.escrow.connect(self.sender(who)).withdraw(amount)):
            self.credits[who] = credit - amount
            self.ledger.add(self.ledger.withdrawn, who, amount)

    @rule(hours=st.integers(1, 40))
    def time_passes(self, hours: int) -> None:
        advance_time(self.w3, hours * HOUR)

    @rule(data=st.data())
    def while_paused(self, data: st.DataObject) -> None:
        """Pause, try one action (fund and release must be refused, the rest must work as usual), unpause."""
        admin = self.escrow.connect(self.sender("admin"))
        admin.pause()
        self.paused = True
        job_id = data.draw(st.sampled_from(sorted(self.model_jobs)))
        action = data.draw(st.sampled_from(["fund", "top_up", "release", "refund", "close", "withdraw"]))
        if action == "fund":
            self.fund_a_new_job("poster", 1, 1, data.draw(st.booleans()), 1, 1)
        elif action == "top_up":
            self.top_up(job_id, "the poster", 1, 1)
        elif action == "release":
            self.release(job_id, [(900, "node", 1)], "operator")
        elif action == "refund":
            self.refund(job_id, "the poster")
        elif action == "close":
            self.close(job_id, "operator")
        else:
            self.withdraw(data.draw(st.sampled_from(WITHDRAWERS)), 100)
        admin.unpause()
        self.paused = False

    # Invariants, checked after every step.
    @invariant()
    def the_escrow_holds_exactly_what_jobs_and_credits_account_for(self) -> None:
        remaining = 0
        for job in self.model_jobs.values():
            state = self.escrow.job_of(job.id)
            assert state == Job(
                poster=self.sender(job.poster).address,
                funded=job.funded,
                released=job.released,
                remaining=job.remaining,
                deadline=job.deadline,
                closed=job.closed,
                max_payouts=job.max_payouts,
                max_payout=job.max_payout,
            )
            remaining += state.remaining
        credits = 0
        for name in self._names():
            credit = self.escrow.credit_of(self.sender(name).address)
            assert credit == self.credits.get(name, 0)
            credits += credit
        assert self.token.balance_of(self.escrow.address) == remaining + credits

    @invariant()
    def nobody_takes_more_than_it_was_credited_or_funded(self) -> None:
        for job in self.model_jobs.values():
            assert job.released + job.refunded + job.remaining == job.funded
        for name in self._names():
            withdrawn = self.ledger.withdrawn.get(name, 0)
            assert withdrawn <= self.ledger.credited.get(name, 0)
            balance = self.token.balance_of(self.sender(name).address)
            expected = (
                self.balances_at_start[name]
                - self.ledger.funded.get(name, 0)
                + self.ledger.refunded.get(name, 0)
                + withdrawn
            )
            assert balance == expected, f"{name}'s token balance moved by something other than its escrow actions"


# Histories per engine. The contract's logic is the same bytecode on both, explored at length on Anvil; on Hardhat
# Network the run checks that engine's answers (revert data, clock, snapshots) over fewer histories, to keep the
# second pass of the suite short.
HISTORIES = {"anvil": 30, "hardhat": 10}


def test_random_escrow_histories_keep_the_invariants(
    chain: devchain.DevChain, w3: Web3, token: ComputeToken, escrow: JobEscrow, actors: Actors
) -> None:
    EscrowMachine.w3 = w3
    EscrowMachine.token = token
    EscrowMachine.escrow = escrow
    EscrowMachine.actors = actors
    run_state_machine_as_test(
        EscrowMachine,
        # No shrinking: on a real chain it takes minutes (past the suite's per-test timeout); a failure prints
        # its whole step sequence instead, which replays the same way.
        settings=settings(
            max_examples=HISTORIES[chain.engine],
            stateful_step_count=20,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        ),
    )
