"""LSTM baseline: an ``nn.LSTM`` mixer + SwiGLU FFN on the shared skeleton.

Table 5 of the Nested Learning paper (arXiv 2512.24695) lists an LSTM as its first row (100 / 100
on every formal language). It is the harness's sanity row: a model known to solve the task, so a
low score elsewhere is the model's, not the harness's. It trains sequentially (no chunked form),
so it is slow on long sequences and is meant for the synthetic tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.layers.ffn import SwiGLU
from nestlearn.layers.lstm import LSTMMixer
from nestlearn.models.config import ModelConfig
from nestlearn.models.families._shared import meta_module, tiny_shape
from nestlearn.models.families.deltanet import matched_ffn_hidden, mixer_options
from nestlearn.models.registry import Family, register_family, register_preset
from nestlearn.models.skeleton import Block


@dataclass
class LSTMOptions:
    """``model.mixer`` options of the ``lstm`` family (none yet: the LSTM's width is ``dim``)."""


def build_lstm_block(cfg: ModelConfig, layer: int) -> Block:
    mixer_options(LSTMOptions, cfg)  # refuses unknown keys
    return Block(
        cfg.dim, LSTMMixer(cfg.dim, init_seed=layer), SwiGLU(cfg.dim, cfg.ffn_width), cfg.norm_eps
    )


register_family(Family("lstm", build_lstm_block, "LSTM (torch.nn.LSTM) mixer + SwiGLU"))


register_preset(
    "lstm-tiny",
    "CPU demo size: d=256, 4 layers, seq 256; FFN width matched to transformer-tiny",
    family="lstm",
    **tiny_shape(),
    ffn_hidden=matched_ffn_hidden(meta_module(LSTMMixer, 256), 256, 4, 8),
)
