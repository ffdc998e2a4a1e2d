"""``torch.compile`` a model the way its layers allow: whole blocks, or compiled chunk steps.

Layers that run a Python loop over chunks (Titans, Hope's self-modifying memory, the CMS;
``chunk_steps = True``) must not be compiled whole: Dynamo unrolls the loop, and hope-tiny did not
finish compiling in 10 minutes. Their per-chunk bodies are pure tensor functions with hand-written
inner gradients, compiled once by :mod:`nestlearn.ops.compiled` and replayed for every chunk.
Everything else (attention, SwiGLU, the recurrent baselines) is compiled per block, or per FFN
when the block's mixer loops over chunks.
"""

from __future__ import annotations

from torch import nn

from nestlearn.ops import compiled

__all__ = ["compile_model", "loops_over_chunks"]


def loops_over_chunks(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule runs a chunk loop (``chunk_steps = True``)."""
    return any(getattr(m, "chunk_steps", False) for m in module.modules())


def compile_model(model: nn.Module, mode: str = "default") -> list[str]:
    """Compile ``model.blocks`` in place; returns what was compiled, one line per block.

    Blocks without a chunk loop are compiled whole (``nn.Module.compile``). In a block with one,
    its chunk steps are compiled (:func:`nestlearn.ops.compiled.enable`, process-wide: every
    chunked op of every model in this process then uses them) and its mixer or FFN,
    whichever has no chunk loop, is compiled whole.
    """
    if mode not in compiled.MODES:
        raise ValueError(f"compile mode must be one of {', '.join(compiled.MODES)}, got {mode!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("compile_model needs a model with .blocks (a nestlearn LanguageModel)")
    done = []
    for i, block in enumerate(blocks):
        if not loops_over_chunks(block):
            block.compile(mode=mode)
            done.append(f"block {i}: whole")
            continue
        compiled.enable(mode)
        parts = []
        for name in ("mixer", "ffn"):
            child = getattr(block, name, None)
            if child is None:
                continue
            if loops_over_chunks(child):
                parts.append(f"{name}: chunk steps")
            else:
                child.compile(mode=mode)
                parts.append(f"{name}: whole")
        done.append(f"block {i}: " + ", ".join(parts))
    return done
