"""Tag the Linear layers that write into the residual stream, for the skeleton's init.

``LanguageModel.init_weights`` draws these from ``normal(0, init_std / sqrt(2 * n_layers))``
(GPT-2 / Llama residual scaling) and every other Linear from ``normal(0, init_std)``. A layer
says which of its Linears are residual outputs when it builds them::

    self.wo = mark_residual_out(nn.Linear(dim, dim, bias=False))

The tag is a plain attribute on the module (not a parameter, not in the state dict), so a model
built on the meta device and moved with ``to_empty`` keeps it. Lives below ``memory`` and
``layers`` because both build such Linears.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

__all__ = ["is_residual_out", "mark_residual_out"]

_ATTR = "residual_out"
M = TypeVar("M", bound=nn.Module)


def mark_residual_out(module: M) -> M:
    """Tag ``module`` (a Linear whose output is added to the residual stream); returns it."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"mark_residual_out expects an nn.Linear, got {type(module).__name__}")
    setattr(module, _ATTR, True)
    return module


def is_residual_out(module: nn.Module) -> bool:
    """Whether ``module`` was tagged by :func:`mark_residual_out`."""
    return bool(getattr(module, _ATTR, False))
