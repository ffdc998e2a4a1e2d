"""Every tiny preset's weights at seed 0 are bit-identical to those recorded before the refactor
that declared the mixer options once and tagged residual-output layers explicitly (issue 17).

``data/init_checksums.json`` was written by the code before that change; a sha256 over every
state-dict entry (name, dtype, shape, bytes) of ``build_model(preset, seed=0)``. A change that
moves one draw of the init, reorders parameters, or changes a residual scale fails here. A family
added later is not required to appear in the list (adding one touches no shared file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nestlearn.models import ModelConfig, build_model, preset_config

CHECKSUMS = json.loads((Path(__file__).parent / "data" / "init_checksums.json").read_text())

# non-preset shapes in the list: option plumbing and residual tagging off the preset defaults
EXTRA = {
    "transformer-cms@tiny": dict(
        family="transformer-cms", mixer={"cms": {"periods": [4, 8]}}
    ),
    "hope@ablations": dict(
        family="hope",
        mixer={
            "adaptive_q": True, "adaptive_k": False, "per_memory_conv": False, "momentum": False,
            "cms": {"variant": "independent", "activation": "gelu"},
        },
    ),  # fmt: skip
    "titans@linear": dict(family="titans", mixer={"memory": "linear", "optimizer": "dgd"}),
    "mamba2@swiglu": dict(family="mamba2", mixer={"ffn": "swiglu", "d_state": 8, "head_dim": 16}),
}
SMALL = dict(vocab_size=259, dim=64, n_layers=2, n_heads=2, max_seq_len=64)


def _digest(model) -> str:  # noqa: ANN001
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_init_is_bit_identical(name: str) -> None:
    if name in EXTRA:
        cfg = ModelConfig(**SMALL, **EXTRA[name])
    else:
        cfg = preset_config(name, vocab_size=259)
    assert _digest(build_model(cfg, seed=0)) == CHECKSUMS[name], (
        f"{name}: the seed-0 weights changed; an init change must be deliberate (regenerate "
        "tests/models/data/init_checksums.json and say why in the commit)"
    )


def test_init_does_not_read_the_global_generator() -> None:
    """``init_weights(seed)`` draws nothing from torch's global generator (the LSTM's own
    ``reset_parameters`` did, which also undid its forget-gate bias of 1)."""
    import torch

    digests = set()
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = build_model(preset_config("lstm-tiny", vocab_size=259), seed=0)
        digests.add(_digest(model))
    assert len(digests) == 1
    D = model.cfg.dim
    assert torch.all(model.blocks[0].mixer.lstm.bias_ih_l0[D : 2 * D] == 1.0)
