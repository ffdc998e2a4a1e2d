"""Whether a linear-recurrence layer tries flash-linear-attention's kernels, written once.

The DeltaNet, Comba, RetNet and RWKV-7 layers take ``backend``: ``fla`` (the kernel, or an
error saying why not), ``auto`` (the kernel on CUDA unless the layer runs its naive reference
op; the PyTorch op when the kernel cannot run) or ``torch``. CPU code never imports
``nestlearn.ops.fla_fast`` (nor fla): the import happens only once the kernel is wanted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["fla_or_none"]


def fla_or_none(
    kernel: str, backend: str, naive: bool, *args: Any, act_dtype: torch.dtype
) -> tuple[Tensor, Tensor] | None:
    """``ops.fla_fast.<kernel>(*args, act_dtype=..., required=backend == "fla")`` when
    ``backend`` is ``fla``, or ``auto`` with CUDA inputs (``args[0]``) and not ``naive``; else
    ``None``, and the caller runs the PyTorch op (as it does when the kernel returns ``None``)."""
    if not (backend == "fla" or (backend == "auto" and args[0].is_cuda and not naive)):
        return None
    from nestlearn.ops import fla_fast  # CUDA only: CPU never imports fla

    return getattr(fla_fast, kernel)(*args, act_dtype=act_dtype, required=backend == "fla")
