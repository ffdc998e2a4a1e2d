"""nestlearn.hf: the transformers wrapper, its cache, generate() and the model-type registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import nestlearn.hf as H  # noqa: E402
from nestlearn.models import FAMILIES, PRESETS, build_model, preset_config  # noqa: E402
from nestlearn.models.generation import generate as native_generate  # noqa: E402

V = 259


def tiny(family: str, **over) -> torch.nn.Module:
    """A two-layer d=64 model of ``family`` (chunked memories use short chunks, so a short
    decode crosses several chunk boundaries)."""
    mixer = dict(PRESETS[f"{family}-tiny"].get("mixer", {}))
    if family.startswith("titans"):
        mixer["chunk_size"] = 4
    over.setdefault("mixer", mixer)
    cfg = preset_config(
        f"{family}-tiny", vocab_size=V, dim=64, n_layers=2, n_heads=2, ffn_hidden=128, **over
    )
    model = build_model(cfg, seed=3)
    return model.eval()


DECODE_FAMILIES = ["transformer", "titans", "mamba2", "deltanet", "ttt-linear", "samba"]
# families that reach the registry later are covered as soon as they exist (no code here)
DECODE_FAMILIES += [f for f in ("hope", "hope-attention") if f in FAMILIES]


@pytest.mark.parametrize("family", DECODE_FAMILIES)
def test_greedy_generate_equals_native_decode(family):
    lm = tiny(family)
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    idx = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    ref, _ = native_generate(lm, idx, 14, temperature=0)
    out = hf.generate(idx, max_new_tokens=14, do_sample=False)
    assert out.shape == (2, 23)
    assert torch.equal(out, ref)
    # the cache really was used: with it off, generate() recomputes the context each step and
    # lands on the same tokens
    out_nocache = hf.generate(idx, max_new_tokens=14, do_sample=False, use_cache=False)
    assert torch.equal(out_nocache, ref)


def test_each_family_gets_its_model_type_and_classes():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for family in FAMILIES:
        mt = "nestlearn-" + family
        assert mt in CONFIG_MAPPING
        cfg_cls = H.config_class_for(family)
        assert cfg_cls.model_type == mt
        assert H.model_class_for(family).config_class is cfg_cls
    lm = tiny("titans")
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    assert type(hf).__name__ == "NestlearnTitansForCausalLM"
    assert hf.config.model_type == "nestlearn-titans"
    assert hf.config.hidden_size == 64 and hf.config.vocab_size == V


def test_a_family_registered_later_is_picked_up():
    from nestlearn.models.families.transformer import build_transformer_block
    from nestlearn.models.registry import Family, register_family

    name = "hf-test-late-family"
    register_family(Family(name, build_transformer_block, "test copy of transformer"))
    try:
        assert "nestlearn-" + name in H.register_families()
        assert "nestlearn-" + name not in H.register_families()  # idempotent
        conf = AutoConfig.for_model(
            "nestlearn-" + name,
            nestlearn=dict(family=name, vocab_size=V, dim=32, n_layers=1, n_heads=2),
        )
        model = AutoModelForCausalLM.from_config(conf)
        assert type(model).__name__ == "NestlearnHfTestLateFamilyForCausalLM"
        logits = model(torch.zeros(1, 3, dtype=torch.long)).logits
        assert logits.shape == (1, 3, V) and torch.isfinite(logits).all()
    finally:
        FAMILIES.pop(name)


def test_config_family_mismatch_and_unknown_keys_are_refused():
    cls = H.config_class_for("titans")
    with pytest.raises(ValueError, match="family 'transformer'"):
        cls(nestlearn=dict(family="transformer", vocab_size=V))
    with pytest.raises(ValueError, match="bad nestlearn model config"):
        H.NestlearnConfig(nestlearn=dict(family="transformer", bogus=1))


@pytest.mark.parametrize("family,tied", [("transformer", True), ("titans", False)])
def test_save_pretrained_round_trip_gives_identical_logits(tmp_path, family, tied):
    from safetensors import safe_open

    lm = tiny(family, tie_embeddings=tied)
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("model.head.weight" in keys) is not tied  # a tied head is stored once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(loaded) is type(hf)
    idx = torch.randint(0, V, (2, 13))
    with torch.no_grad():
        diff = (loaded(idx).logits - lm(idx)[0]).abs().max().item()
    assert diff < 1e-5
    if tied:
        assert loaded.model.head.weight is loaded.model.embed.weight


def test_forward_loss_is_shifted_cross_entropy_and_trains():
    lm = tiny("titans").train()
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    idx = torch.randint(0, V, (2, 16))
    labels = idx.clone()
    labels[0, 5] = -100
    out = hf(idx, labels=labels)
    assert out.cache is None  # no state kept while training
    logits, _ = lm(idx)
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(out.loss, ref, atol=1e-6)
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        loss = hf(idx, labels=idx).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


def test_decode_state_is_constant_size_for_recurrent_families():
    idx = torch.randint(0, V, (1, 8))
    sizes = {}
    for family in ("titans", "mamba2", "transformer"):
        hf = H.NestlearnForCausalLM.from_language_model(tiny(family))
        row = []
        for n in (8, 40):
            cache = H.NestlearnCache()
            hf.generate(idx, max_new_tokens=n, do_sample=False, cache=cache)
            assert cache.get_seq_length() == 8 + n - 1  # the last token is not consumed yet
            row.append(H.state_nbytes(cache.state))
        sizes[family] = row
    assert sizes["titans"][0] == sizes["titans"][1] > 0
    assert sizes["mamba2"][0] == sizes["mamba2"][1] > 0
    # attention keeps K and V: 2 layers x 2 tensors x 32 more tokens x 64 floats x 4 bytes
    assert sizes["transformer"][1] - sizes["transformer"][0] == 2 * 2 * 32 * 64 * 4


def test_generation_continues_from_a_returned_cache():
    lm = tiny("titans")
    hf = H.NestlearnForCausalLM.from_language_model(lm)
    idx = torch.randint(0, V, (2, 6))
    full = hf.generate(idx, max_new_tokens=20, do_sample=False)
    cache = H.NestlearnCache()
    part = hf.generate(idx, max_new_tokens=9, do_sample=False, cache=cache)
    rest = hf.generate(part, max_new_tokens=11, do_sample=False, cache=cache)
    assert torch.equal(rest, full)


@pytest.mark.parametrize("family", ["titans", "mamba2"])
def test_beam_search_reorders_the_state(family):
    hf = H.NestlearnForCausalLM.from_language_model(tiny(family))
    idx = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    kw = dict(max_new_tokens=8, do_sample=False, num_beams=3, num_return_sequences=2)
    with_state = hf.generate(idx, **kw)
    recomputed = hf.generate(idx, use_cache=False, **kw)
    assert with_state.shape == (4, 13)
    assert torch.equal(with_state, recomputed)


def test_cache_batch_editing_indexes_every_state_tensor():
    lm = tiny("titans")
    _, state = lm(torch.randint(0, V, (3, 7)), return_state=True)
    cache = H.NestlearnCache(state)
    assert cache.batch_size == 3 and cache.get_seq_length() == 7
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    moved = []
    H.map_state_tensors(cache.state, lambda t: moved.append(t) or t)
    orig = []
    H.map_state_tensors(state, lambda t: orig.append(t) or t)
    assert len(moved) == len(orig) > 0
    for a, b in zip(moved, orig):
        assert torch.equal(a, b[[2, 2, 0]])
    cache.batch_repeat_interleave(2)
    assert cache.batch_size == 6 and cache.get_seq_length() == 7
    with pytest.raises(NotImplementedError, match="cannot be rewound"):
        cache.crop(1)


def test_padding_and_foreign_caches_are_refused():
    hf = H.NestlearnForCausalLM.from_language_model(tiny("transformer"))
    idx = torch.randint(0, V, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        hf.generate(idx, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(TypeError, match="NestlearnCache"):
        hf(idx, cache=transformers.DynamicCache())


def test_import_nestlearn_registers_lazily_without_importing_transformers():
    code = (
        "import sys, nestlearn\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "import transformers\n"
        "assert 'nestlearn-titans' in CONFIG_MAPPING and 'nestlearn-transformer' in CONFIG_MAPPING\n"
        "assert type(transformers.__spec__.loader).__name__ == 'SourceFileLoader'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
