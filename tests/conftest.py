"""Shared fixtures: quiet threads, restored default dtype, small learnable token streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _torch_defaults():
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def float64_norm_rope(monkeypatch):
    """The shared RMSNorm and RoPE compute in float32 by design; exact float64 comparisons of
    whole models (e.g. a stream in calls against one call) patch both to the input dtype."""
    import nestlearn.layers.attention as attention
    from nestlearn.layers.norm import RMSNorm

    f64 = torch.float64

    def norm(self, x):
        xf = x if x.dtype == f64 else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)

    rope32 = attention.apply_rope

    def rope(x, cos, sin, interleaved=False):
        if x.dtype != f64 or interleaved:
            return rope32(x, cos, sin, interleaved)
        c, s = cos.to(f64)[None, :, None, :], sin.to(f64)[None, :, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)

    monkeypatch.setattr(RMSNorm, "forward", norm)
    monkeypatch.setattr(attention, "apply_rope", rope)


class ByteTok:
    """A minimal stand-in tokenizer for trainer tests (bytes, no specials)."""

    name = "test-bytes"
    vocab_size = 256
    bos_id = None
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        return [1] * 256


def source_text_tokens() -> np.ndarray:
    """Real, learnable bytes: this package's own source code, about 200 KB."""
    files = sorted((REPO / "src" / "nestlearn").rglob("*.py"))
    blob = b"\n".join(f.read_bytes() for f in files)
    return np.frombuffer(blob, dtype=np.uint8).astype(np.int64)


@pytest.fixture(scope="session")
def tiny_data():
    from nestlearn.train.batches import ArrayTokens

    arr = source_text_tokens()
    cut = int(len(arr) * 0.9)
    return ByteTok(), ArrayTokens(arr[:cut]), ArrayTokens(arr[cut:])


def pytest_configure(config):  # noqa: D103 - keep the corpus cache of a test run private
    import os
    import tempfile

    os.environ.setdefault("NESTLEARN_CACHE", tempfile.mkdtemp(prefix="nestlearn-test-cache-"))
    # Test tensors are tiny: one thread is as fast and immune to OpenMP oversubscription when
    # the machine is shared (two threads were up to 80x slower under load).
    torch.set_num_threads(1)
