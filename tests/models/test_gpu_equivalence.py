"""Every tiny preset on a CUDA device against the CPU (``gpu`` marker; skipped without CUDA).

The same checks as ``benchmarks/gpu_check.py`` (which prints them as a table): float32 logits and
parameter gradients against the CPU with TF32 off, bf16 autocast loss against float32, and
streaming decode against one full forward on the device.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from nestlearn.models import PRESETS

_spec = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(n for n in PRESETS if n.endswith("-tiny")))
def test_preset_on_cuda_matches_cpu(name: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    r = gpu_check.check_preset(name, torch.device("cuda"), batch=2, seq=200, vocab=512)
    assert r["finite"], r
    assert r["fwd_rel"] < 1e-3 and r["grad_rel"] < 1e-3, r
    assert r["decode_rel"] < 1e-3 and r["bf16_loss_diff"] < 0.05, r


def test_the_check_itself_runs_on_the_cpu() -> None:
    """The harness is exercised everywhere: CPU against CPU is exact, decode matches."""
    r = gpu_check.check_preset("hope-tiny", torch.device("cpu"), batch=1, seq=40, vocab=64)
    assert r["fwd_rel"] == 0.0 and r["grad_rel"] == 0.0 and r["finite"]
    assert r["decode_rel"] < 1e-4
