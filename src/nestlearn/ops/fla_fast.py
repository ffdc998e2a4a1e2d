"""Optional fast path: flash-linear-attention's Triton kernels for the delta rule and retention.

Used only when all of these hold: the tensors are on a CUDA device, the activations are bfloat16
or float16 (fla's chunked delta-rule kernels refuse float32), and ``import fla`` succeeds. Anything
else returns ``None`` and the caller runs the pure-PyTorch op, which is the reference these kernels
are tested against (``tests/models/test_baselines_linear.py``, ``gpu`` marker). CPU code never
reaches the import: callers check ``q.is_cuda`` before importing this module's functions.

Install with ``pip install flash-linear-attention`` (it needs triton and a CUDA GPU).

Axis legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["fla_comba", "fla_delta_rule", "fla_module", "fla_retention", "fla_rwkv7"]

_HALF = (torch.bfloat16, torch.float16)


@functools.cache
def fla_module(name: str) -> ModuleType | None:
    """``fla.ops.<name>`` or ``None`` when flash-linear-attention is not importable (cached)."""
    try:
        return importlib.import_module(f"fla.ops.{name}")
    except Exception as e:  # ImportError, or triton failing to initialise
        logger.info("flash-linear-attention fast path unavailable (%s: %s)", type(e).__name__, e)
        return None


def _usable(x: Tensor, act_dtype: torch.dtype, required: bool, op: str) -> bool:
    if not x.is_cuda or act_dtype not in _HALF:
        if required:
            raise ValueError(
                f"backend='fla' needs CUDA tensors in bfloat16/float16, got {x.device} "
                f"{act_dtype}; use backend='auto' to fall back to the PyTorch op"
            )
        return False
    if fla_module(op) is None:
        if required:
            raise ImportError(
                "backend='fla' needs flash-linear-attention: pip install flash-linear-attention"
            )
        return False
    if not required and _probe(op, str(x.device), act_dtype) is not None:
        return False
    return True


@functools.cache
def _probe(op: str, device: str, act_dtype: torch.dtype) -> str | None:
    """Run one tiny forward and backward through ``fla.ops.<op>``; the error text, or None.

    fla refuses some kernels at run time on some setups (for example fla 0.6.0 raises on Hopper
    GPUs with Triton 3.4-3.7.0 for the gated backward, which ``gated_delta_rule`` and
    ``simple_gla`` use); the error can come from the backward pass, too late to fall back. So
    ``backend='auto'`` probes each op once per device and dtype and, if it fails, logs why and
    keeps the PyTorch op. ``backend='fla'`` skips the probe and lets the error through.
    """
    mod = fla_module(op)
    gen = torch.Generator(device=device).manual_seed(0)
    B, T, H, K = 1, 64, 1, 64

    def leaf(shape: tuple[int, ...], unit: bool = False) -> Tensor:
        t = torch.randn(*shape, device=device, generator=gen)
        t = torch.nn.functional.normalize(t, dim=-1) if unit else t
        return t.to(act_dtype).requires_grad_()

    # autograd on even when the model runs under no_grad / inference_mode (eval, generation),
    # and the probe's own dtypes whatever the caller's autocast says
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=torch.device(device).type, enabled=False),
    ):
        try:
            q, k, v = leaf((B, T, H, K), True), leaf((B, T, H, K), True), leaf((B, T, H, K))
            beta = torch.rand(B, T, H, device=device, generator=gen).to(act_dtype)
            g = torch.full((B, T, H), -0.1, device=device)
            if op == "delta_rule":
                o, _ = mod.chunk_delta_rule(q=q, k=k, v=v, beta=beta, output_final_state=True)
            elif op == "gated_delta_rule":
                o, _ = mod.chunk_gated_delta_rule(
                    q=q, k=k, v=v, g=g, beta=beta, output_final_state=True
                )
            elif op == "rwkv7":
                kap = leaf((B, T, H, K), True)
                w = torch.full((B, T, H, K), -0.3, device=device)
                o, _ = mod.chunk_rwkv7(r=q, w=w, k=k, v=v, a=-kap, b=kap * 0.5, scale=1.0,
                                       output_final_state=True)  # fmt: skip
            elif op == "comba":
                o, _ = mod.chunk_comba(q=q, k=k, v=v, p=k * 0.7, g=g, beta=beta,
                                       output_final_state=True)  # fmt: skip
            else:
                o, _ = mod.chunk_simple_gla(q=q, k=k, v=v, g=g, output_final_state=True)
            o.float().sum().backward()
        except Exception as e:  # RuntimeError, ValueError, Triton errors: all mean "skip"
            msg = f"{type(e).__name__}: {e}"
            logger.warning(
                "flash-linear-attention's %s failed a probe on %s %s, so backend='auto' uses "
                "the PyTorch op (%s)", op, device, act_dtype, msg.splitlines()[0][:300],
            )  # fmt: skip
            return msg
    return None


def fla_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    initial_state: Tensor | None,
    *,
    act_dtype: torch.dtype = torch.bfloat16,
    scale: float | None = None,
    required: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """(Gated) delta rule through fla's chunked kernels, same contract as ``chunk_delta_rule``.

    Args:
        q, k: ``[B, T, H, K]`` (already L2-normalised), v: ``[B, T, H, V]``, beta, g: ``[B, T, H]``,
            initial_state: ``[B, H, K, V]``. Any floating dtype; cast to ``act_dtype`` for fla.
        act_dtype: the model's activation dtype; only bf16/fp16 take the kernel path.
        required: raise instead of returning ``None`` when the kernels cannot be used.

    Returns:
        ``(o [B, T, H, V] float32, final_state [B, H, K, V] float32)`` or ``None``.
    """
    name = "delta_rule" if g is None else "gated_delta_rule"
    if not _usable(q, act_dtype, required, name):
        return None
    mod = fla_module(name)
    h0 = None if initial_state is None else initial_state.float()
    q, k, v, beta = (t.to(act_dtype) for t in (q, k, v, beta))
    if g is None:
        o, S = mod.chunk_delta_rule(
            q=q, k=k, v=v, beta=beta, scale=scale, initial_state=h0, output_final_state=True
        )
    else:
        o, S = mod.chunk_gated_delta_rule(
            q=q, k=k, v=v, g=g.float(), beta=beta, scale=scale, initial_state=h0,
            output_final_state=True,
        )  # fmt: skip
    return o.float(), S.float()


def fla_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    initial_state: Tensor | None,
    *,
    act_dtype: torch.dtype = torch.bfloat16,
    scale: float | None = None,
    required: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """Retention through fla's ``chunk_simple_gla`` with a per-head constant log-decay.

    The decay is passed as the per-token gate ``g = log gamma`` broadcast to ``[B, T, H]`` (the
    argument every fla version has) rather than the newer ``g_gamma``.

    Same arguments as :func:`fla_delta_rule` with ``gamma: [H]`` instead of ``beta``/``g``.
    Returns ``(o float32, final_state float32)`` or ``None``.
    """
    if not _usable(q, act_dtype, required, "simple_gla"):
        return None
    mod = fla_module("simple_gla")
    h0 = None if initial_state is None else initial_state.float()
    q, k, v = (t.to(act_dtype) for t in (q, k, v))
    B, T, H = q.shape[:3]
    g = gamma.float().log()[None, None, :].expand(B, T, H).contiguous()
    o, S = mod.chunk_simple_gla(
        q=q, k=k, v=v, g=g, scale=scale, initial_state=h0, output_final_state=True
    )
    return o.float(), S.float()


def fla_rwkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    initial_state: Tensor | None,
    *,
    act_dtype: torch.dtype = torch.bfloat16,
    scale: float = 1.0,
    required: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """RWKV-7's DPLR delta rule through fla's ``chunk_rwkv7``, same contract as
    :func:`nestlearn.ops.rwkv7.chunk_rwkv7` (``w`` the log-decay, state ``[B, H, K, V]``).

    Returns ``(o float32, final_state float32)`` or ``None``.
    """
    if not _usable(r, act_dtype, required, "rwkv7"):
        return None
    mod = fla_module("rwkv7")
    h0 = None if initial_state is None else initial_state.float()
    r, k, v, a, b = (t.to(act_dtype) for t in (r, k, v, a, b))
    o, S = mod.chunk_rwkv7(
        r=r, w=w.to(act_dtype), k=k, v=v, a=a, b=b, scale=scale, initial_state=h0,
        output_final_state=True,
    )  # fmt: skip
    return o.float(), S.float()


def fla_comba(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None,
    *,
    act_dtype: torch.dtype = torch.bfloat16,
    scale: float | None = None,
    required: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """Comba through fla's ``chunk_comba`` (no in-kernel l2 norm: the layer passes normalised
    ``q, k`` and ``p = d k``), same contract as :func:`nestlearn.ops.comba.chunk_comba`.

    Returns ``(o float32, final_state float32)`` or ``None``.
    """
    if not _usable(q, act_dtype, required, "comba"):
        return None
    mod = fla_module("comba")
    h0 = None if initial_state is None else initial_state.float()
    q, k, v, p, beta = (t.to(act_dtype) for t in (q, k, v, p, beta))
    o, S = mod.chunk_comba(
        q=q, k=k, v=v, p=p, g=g.float(), beta=beta, scale=scale, initial_state=h0,
        output_final_state=True, use_qk_l2norm_in_kernel=False,
    )  # fmt: skip
    return o.float(), S.float()
