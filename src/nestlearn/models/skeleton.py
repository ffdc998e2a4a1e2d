"""The one LanguageModel skeleton every family shares: embed -> blocks -> norm -> head.

Axis legend: B batch, T time, D model width, V vocabulary.

A family differs only in the mixer and FFN classes inside its blocks (STYLE example 4), so
checkpointing, generation, evaluation and parallelism are written once, here and in
``nestlearn.train``. Per-sequence state (KV caches, memory weights, CMS levels) is data:
a :class:`ModelState` threaded through ``forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nestlearn.layers.norm import RMSNorm
from nestlearn.memory.cms import ContinuumMemory
from nestlearn.models.config import ModelConfig
from nestlearn.utils.residual import is_residual_out


def _detach(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if hasattr(obj, "detach"):
        return obj.detach()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o) for o in obj)
    return obj


@dataclass
class ModelState:
    """Per-sequence state of every block: ``layers[i] = (mixer_state, ffn_state)``.

    ``position`` counts the tokens already consumed (the next token's absolute position).
    """

    layers: list[tuple[Any, Any]]
    position: int = 0

    def detach(self) -> ModelState:
        return ModelState([(_detach(m), _detach(f)) for m, f in self.layers], self.position)


class Block(nn.Module):
    """Pre-norm residual block: ``h = x + mixer(norm(x)); y = h + ffn(norm(h))``.

    ``ffn`` may be ``None`` (e.g. Mamba-style blocks). Both submodules follow the house
    signature ``forward(x, *, state=None) -> (y, state)``.
    """

    def __init__(self, dim: int, mixer: nn.Module, ffn: nn.Module | None, eps: float) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(dim, eps)
        self.mixer = mixer
        self.ffn_norm = RMSNorm(dim, eps) if ffn is not None else None
        self.ffn = ffn

    def forward(
        self, x: torch.Tensor, *, state: tuple[Any, Any] | None = None
    ) -> tuple[torch.Tensor, tuple[Any, Any] | None]:
        ms, fs = state if state is not None else (None, None)
        y, ms = self.mixer(self.mixer_norm(x), state=ms)
        x = x + y
        if self.ffn is not None:
            y, fs = self.ffn(self.ffn_norm(x), state=fs)
            x = x + y
        return x, ((ms, fs) if state is not None else None)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        def make(mod: nn.Module | None) -> Any:
            fn = getattr(mod, "init_state", None)
            return fn(batch_size, device, dtype) if fn is not None else None

        return (make(self.mixer), make(self.ffn))


MAX_SEED = 1 << 40
_LAYER_STRIDE = 1 << 16


def layer_seed(seed: int, layer: int) -> int:
    """The ``init_seed`` of the modules of block ``layer`` in a model built with ``seed``:
    ``seed * 65536 + layer``, distinct for every (seed, layer) pair with ``layer < 65536``.
    Seed 0 gives ``layer``, the fixed per-layer seeds models used before seeds reached
    these modules, so seed-0 models keep their weights."""
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**40), got {seed}")
    if not 0 <= layer < _LAYER_STRIDE:
        raise ValueError(f"layer index must be in [0, 65536), got {layer}")
    return seed * _LAYER_STRIDE + layer


class LanguageModel(nn.Module):
    """Causal language model over token ids.

    Shapes: ``idx: [B, T] (int64) -> logits: [B, T, V]``.
    Build with :func:`nestlearn.models.build_model`; parameters are set by :meth:`init_weights`.
    """

    def __init__(self, cfg: ModelConfig, blocks: list[Block]) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building the model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False
        self.tie_weights()

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them.

        Applies to stateless calls with gradients enabled (training); calls that thread a
        per-sequence state run as usual. Costs about one extra forward per step and keeps, per
        block, only its input alive between the forward and the backward pass: with Hope's
        in-context CMS at the paper's widths this is what decides whether a batch fits
        (``docs/training.md``).
        """
        if on and any(m.in_context and m.cfg.objective == "ntp" for m in self._cms()):
            raise ValueError(
                "train.activation_checkpointing=true does not apply to cms.objective=ntp: the "
                "exact next-token driver runs the model in stateful segments and needs their "
                "graph for the inner gradients; set train.activation_checkpointing=false, or "
                "cms.objective=next"
            )
        self.activation_checkpointing = bool(on)

    def _cms(self) -> list[ContinuumMemory]:
        return [m for b in self.blocks for m in (b.mixer, b.ffn) if isinstance(m, ContinuumMemory)]

    def tie_weights(self) -> None:
        """Share the embedding with the head when configured (again after ``to_empty``)."""
        if self.cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Set every parameter and buffer. The one place initialisation happens.

        ============================== ==========================================
        parameter                      init
        ============================== ==========================================
        embed.weight                   normal(0, init_std); tied: normal(0, s_head)
        head.weight (untied)           normal(0, s_head), s_head = min(init_std, 0.3/sqrt(D))
        input-side Linear weights      normal(0, init_std)
        residual outputs (Linears      normal(0, init_std / sqrt(2 * n_layers))
        tagged ``mark_residual_out``)  (GPT-2 / Llama residual scaling)
        biases                         zeros
        RMSNorm weights                ones
        modules with reset_parameters  their own documented init (memories, convs)
        ============================== ==========================================

        ``s_head`` keeps the logits' standard deviation at about 0.3 whatever the width, so
        the step-0 loss is within ~0.05 nats of ln(V) for every preset (checked by a test).
        Non-persistent buffers (RoPE frequencies) are recomputed, so a model built on the
        meta device and moved with ``to_empty`` is fully initialised by this call.

        Seeds: the matrices above draw from one generator seeded by ``seed``. A module with
        its own random init (memories, convolutions, decay rates, persistent tokens) draws
        from its own generator seeded by its ``init_seed``, which this call sets to
        :func:`layer_seed` ``(seed, layer)``: every draw follows ``seed`` (the same seed gives
        the same weights in any process; another seed changes the memories' initial weights
        too), and no draw touches torch's global generator. ``seed=None`` keeps the modules'
        own ``init_seed`` and draws the matrices from the global generator.
        """
        cfg = self.cfg
        self.tie_weights()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.embed.weight.device).manual_seed(seed)
            for name, module in self.named_modules():
                if isinstance(getattr(module, "init_seed", None), int):
                    parts = name.split(".")
                    layer = int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 else 0
                    module.init_seed = layer_seed(seed, layer)
        std = cfg.init_std
        s_head = min(std, 0.3 / math.sqrt(cfg.dim))
        out_std = std / math.sqrt(2 * cfg.n_layers)
        for module in self.modules():
            if module is self:
                continue
            if isinstance(module, nn.Linear) and module is not self.head:
                s = out_std if is_residual_out(module) else std
                module.weight.normal_(0.0, s, generator=gen)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
            elif hasattr(module, "reset_parameters") and not isinstance(
                module, (nn.Linear, nn.Embedding, nn.RNNBase)
            ):
                # torch's recurrent layers draw from the global generator: their owner (e.g.
                # LSTMMixer) sets them from its own, and must not be overwritten afterwards
                module.reset_parameters()
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        self.embed.weight.normal_(0.0, s_head if cfg.tie_embeddings else std, generator=gen)
        if not cfg.tie_embeddings:
            self.head.weight.normal_(0.0, s_head, generator=gen)

    # --------------------------------------------------------------- forward
    def forward(
        self,
        idx: torch.Tensor,
        *,
        state: ModelState | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, ModelState | None]:
        """Logits for every position; optionally thread per-sequence state.

        Args:
            idx: ``[B, T]`` token ids.
            state: state returned by an earlier call (continues that sequence).
            return_state: start a fresh state when ``state`` is None and return it.
        Returns:
            ``(logits [B, T, V], state or None)``.

        With a CMS level of ``objective="ntp"`` the call runs through the exact next-token
        driver (:mod:`nestlearn.models.ntp`): the levels update by the model's own next-token
        gradient, and a returned state holds the last token's term until the next call.
        """
        if idx.ndim != 2:
            raise ValueError(f"idx must be [batch, time], got shape {tuple(idx.shape)}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.device.type == "cpu" and idx.numel() and not torch.compiler.is_compiling():
            # on the CPU this costs a min and a max; a GPU input is trusted (checking would
            # wait for the device every call): the trainer and evals check ids on the CPU
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(
                    f"token id {lo if lo < 0 else hi} is outside this model's vocabulary "
                    f"[0, {self.cfg.vocab_size}); encode the text with the tokenizer the model "
                    "was trained with"
                )
        if self._ntp_driven(state):
            from nestlearn.models.ntp import driven_forward

            return driven_forward(self, idx, state=state, return_state=return_state)
        x = self.embed(idx)
        if state is None and return_state:
            state = self.init_state(idx.shape[0], device=idx.device)
        new_layers = []
        recompute = self.activation_checkpointing and state is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(_block_output, block, x, use_reentrant=False)
                new_layers.append(None)
                continue
            x, s = block(x, state=state.layers[i] if state is not None else None)
            new_layers.append(s)
        logits = self.head(self.norm(x))
        if state is None:
            return logits, None
        return logits, ModelState(new_layers, state.position + idx.shape[1])

    def _ntp_driven(self, state: ModelState | None) -> bool:
        """Whether this call must run through the exact next-token driver: a CMS level learns
        from the model's next-token gradient (``cms.objective=ntp``, not frozen), or the state
        holds such a term still waiting for this call's first token. The driver's own calls
        are plain (``_ntp_driving``, set by ``nestlearn.models.ntp``)."""
        if self.__dict__.get("_ntp_driving", False):
            return False
        if getattr(state, "pending", None) is not None:
            return True
        return any(m.ntp_active for m in self._cms())

    def init_state(self, batch_size: int, device: torch.device | None = None) -> ModelState:
        """A fresh per-sequence state for ``batch_size`` sequences."""
        device = device or self.embed.weight.device
        dtype = self.embed.weight.dtype
        return ModelState([b.init_state(batch_size, device, dtype) for b in self.blocks], 0)

    # ----------------------------------------------------------- accounting
    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward).

        Counts the matmuls of every block (each submodule's ``flops_per_token(seq_len)``, the
        :class:`~nestlearn.layers.protocol.Mixer` protocol; a submodule without one is counted as
        2 x its parameter count) plus the head.
        """
        fwd = 2 * self.cfg.dim * self.cfg.vocab_size
        for block in self.blocks:
            for mod in (block.mixer, block.ffn):
                if mod is None:
                    continue
                fn = getattr(mod, "flops_per_token", None)
                if fn is None:
                    fwd += 2 * sum(p.numel() for p in mod.parameters())
                else:
                    fwd += int(fn(seq_len))
        return 3 * fwd


def _block_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stateless block call returning the activations only (what ``checkpoint`` recomputes)."""
    return block(x)[0]
