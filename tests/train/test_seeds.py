"""Seeds: every random draw of a model's init follows its seed, in any process, for every family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nestlearn.models import FAMILIES, build_model, preset_config
from nestlearn.models.skeleton import layer_seed
from tests.train.seed_worker import PRESET, own_generator_params

WORKER = Path(__file__).with_name("seed_worker.py")
REPO = Path(__file__).resolve().parents[2]


# inits that are deterministic functions of the layer index, not random draws (RWKV-7's token-shift
# mixes, decay and in-context-rate biases and key scale, as fla initialises them)
DETERMINISTIC = {"rwkv7": ("mixer.mu", "mixer.w_bias", "mixer.a_bias", "mixer.k_k")}


def _small(family: str, seed: int):
    cfg = preset_config(PRESET[family], family=family, n_layers=2, dim=64, n_heads=2, vocab_size=64)
    return build_model(cfg, seed=seed)


def test_same_seed_same_weights_and_losses_in_another_process(tmp_path):
    """A fresh process (no test fixtures, its own global RNG state) and this one agree bit for
    bit on the initial weights and the step-1 and step-2 losses of every family."""
    from tests.train.seed_worker import run

    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(WORKER), "0", str(tmp_path / "sub")],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    torch.manual_seed(1234)  # whatever the global generator holds must not matter
    mine = {f: run(f, 0, tmp_path / "here") for f in sorted(FAMILIES)}
    assert sorted(theirs) == sorted(FAMILIES)
    diff = {f: (mine[f], theirs[f]) for f in mine if mine[f] != theirs[f]}
    assert not diff, diff


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_another_seed_changes_every_random_init(family):
    """Seed 1 changes every randomly initialised tensor of seed 0, including those drawn by a
    module's own generator (memory M_0, convs, decay rates, persistent tokens, TTT W0)."""
    a, b = _small(family, 0), _small(family, 1)
    same = []
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        # a fixed init (norm gains, gate biases set per row) is constant along the last dim
        constant = p.numel() < 2 or bool((p == p[..., :1]).all())
        fixed = name.endswith(DETERMINISTIC.get(family, ()))
        if not constant and not fixed and torch.equal(p, q):
            same.append(name)
    assert not same, f"{family}: identical under seeds 0 and 1: {same}"
    own = own_generator_params(a)
    if family in ("deltanet", "gated-deltanet", "titans", "hope", "mamba2", "samba", "ttt-mlp"):
        assert own, f"{family} should have modules with their own generators"


def test_building_a_model_leaves_the_global_generator_alone():
    before = torch.get_rng_state()
    for family in ("deltanet", "gated-deltanet", "titans", "mamba2"):
        _small(family, 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_layer_seed_keeps_seed_zero_and_separates_layers():
    assert [layer_seed(0, i) for i in range(3)] == [0, 1, 2]
    seen = {layer_seed(s, i) for s in range(4) for i in range(50)}
    assert len(seen) == 200
    with pytest.raises(ValueError, match="seed must be in"):
        layer_seed(-1, 0)
