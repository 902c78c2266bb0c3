"""Torch on one thread for these tests: on a 2-core machine shared with other test processes, torch's thread pool
spins against them (a training step measured 7× slower with 2 threads than with 1 under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
