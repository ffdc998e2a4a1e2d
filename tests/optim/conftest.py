"""One torch thread for the optimizer tests: the problems are tiny (float64, a few thousand
numbers), and on a shared 2-core machine two OpenMP threads per process oversubscribe the CPU
and run ~10x slower. The root conftest restores the thread count after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
