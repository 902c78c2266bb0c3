"""The benchmark runner's checksum is exact: the same on every machine, BLAS and thread count."""

from __future__ import annotations

import hashlib

import numpy as np

from marketplace.jobs.kinds import decide
from nodeagent.runners import benchmark, get


def test_the_checksum_is_a_pure_function_of_seed_index_and_size() -> None:
    payload = {"matrix_size": 64, "seed": 42, "index": 3}
    first = benchmark.run(payload)
    assert benchmark.run(payload)["checksum"] == first["checksum"]
    assert benchmark.run({**payload, "index": 4})["checksum"] != first["checksum"]
    assert benchmark.run({**payload, "seed": 43})["checksum"] != first["checksum"]
    assert first["flops"] > 0


def test_the_product_is_exact_whatever_the_summation_order() -> None:
    a, b = benchmark.matrices(48, 7, 0)
    blas = a @ b
    # An independent, differently-ordered computation in exact integers.
    exact = np.einsum("ik,kj->ij", a.astype(np.int64), b.astype(np.int64))
    assert np.array_equal(blas, exact.astype(np.float64))
    assert (
        benchmark.run({"matrix_size": 48, "seed": 7, "index": 0})["checksum"]
        == hashlib.sha256(exact.astype("<f8").tobytes()).hexdigest()
    )


def test_the_checksum_is_pinned_so_a_numpy_change_cannot_slip_through() -> None:
    # Reproducibility across machines and releases is the kind's contract; PCG64 streams are stable.
    assert benchmark.run({"matrix_size": 16, "seed": 1, "index": 0})["checksum"] == PINNED


def test_runners_are_found_by_kind() -> None:
    assert get("benchmark") is benchmark.run


def test_replicas_that_agree_are_accepted_and_the_odd_one_out_rejected() -> None:
    verdict = decide({"a": "x", "b": "x", "c": "y"}, quorum=2)
    assert verdict.accepted == {"a", "b"}
    assert verdict.rejected == {"c"}
    assert not verdict.needs_another_replica


def test_two_disagreeing_replicas_need_a_third() -> None:
    verdict = decide({"a": "x", "b": "y"}, quorum=2)
    assert verdict.needs_another_replica
    assert not verdict.accepted
    assert not verdict.rejected


PINNED = "abdc20436972d4887e49f4c135551576d56ff99e25438e431126f5a548a1cb99"


def test_a_tie_between_two_groups_is_no_majority() -> None:
    assert decide({"a": "x", "b": "x", "c": "y", "d": "y"}, quorum=2).needs_another_replica


def test_agreement_can_be_a_tolerance_rather_than_equality() -> None:
    close = lambda a, b: abs(a - b) < 0.5  # noqa: E731
    verdict = decide({"a": 1.0, "b": 1.2, "c": 9.0}, quorum=2, agree=close)
    assert verdict.accepted == {"a", "b"}
    assert verdict.rejected == {"c"}


def test_a_single_replica_decides_when_the_job_asks_for_one() -> None:
    assert decide({"a": "x"}, quorum=1).accepted == {"a"}
