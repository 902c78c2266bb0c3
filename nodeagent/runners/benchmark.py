"""The `benchmark` runner: multiply two seeded float64 matrices and report an exact checksum and FLOP/s."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol import BenchmarkPayload

# Entries are small integers, so every product and partial sum is an integer far below 2**53: float64
# holds them exactly and the result does not depend on the BLAS, the thread count or the summation order.
_ENTRY_BOUND = 8


def matrices(matrix_size: int, seed: int, index: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The two input matrices of task `index`: a pure function of (seed, index, size) on every platform."""
    rng = np.random.default_rng([seed, index])
    shape = (matrix_size, matrix_size)
    a = rng.integers(-_ENTRY_BOUND, _ENTRY_BOUND + 1, size=shape).astype(np.float64)
    b = rng.integers(-_ENTRY_BOUND, _ENTRY_BOUND + 1, size=shape).astype(np.float64)
    return a, b


def run(payload: dict[str, Any], workdir: Path | None = None) -> dict[str, Any]:
    """Run one benchmark task (a protocol.BenchmarkPayload as JSON). The metrics are the artifact."""
    task = BenchmarkPayload.from_json(payload)
    n = task.matrix_size
    a, b = matrices(n, task.seed, task.index)
    started = time.perf_counter()
    product = a @ b
    elapsed = max(time.perf_counter() - started, 1e-9)
    checksum = hashlib.sha256(product.astype("<f8").tobytes()).hexdigest()
    return {"checksum": checksum, "flops": 2.0 * n**3 / elapsed, "seconds": elapsed, "matrix_size": n}
