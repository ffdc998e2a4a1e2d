"""State files: save / load round trips for every decoding family, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import save_file

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.memory.cms import CMSConfig, CMSState, ContinuumMemory
from nestlearn.models import (
    FAMILIES,
    LanguageModel,
    ModelConfig,
    ModelState,
    StateFileError,
    build_model,
    load_state,
    save_state,
)
from nestlearn.models.skeleton import Block
from nestlearn.models.state_io import read_state, read_state_info

F64 = torch.float64
DECODE_FAMILIES = sorted(n for n, f in FAMILIES.items() if f.supports_decode)


def _small(family: str, **over) -> LanguageModel:
    cfg = dict(family=family, vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=64)
    cfg.update(over)
    seed = cfg.pop("seed", 0)
    return build_model(ModelConfig(**cfg), seed=seed).to(F64)


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a nested state, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, ModelState):
        return _tensors(obj.layers)
    if hasattr(obj, "__dataclass_fields__"):
        return [t for f in obj.__dataclass_fields__ for t in _tensors(getattr(obj, f))]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


@pytest.mark.parametrize("family", DECODE_FAMILIES)
def test_save_load_continue_equals_one_call(family, tmp_path):
    torch.manual_seed(0)
    model = _small(family)
    idx = torch.randint(0, 50, (2, 40))
    full, _ = model(idx)
    # 23 is not a multiple of any chunk size: the saved state sits mid-chunk
    a, state = model(idx[:, :23], return_state=True)
    path = save_state(state, tmp_path / "s.safetensors", model, source="test")
    loaded = load_state(path, model, batch_size=2)
    # the file is lossless: every tensor comes back bit for bit, in the same structure
    assert loaded.position == state.position == 23
    before, after = _tensors(state), _tensors(loaded)
    assert len(before) == len(after) and all(torch.equal(x, y) for x, y in zip(before, after))
    assert all(x.dtype == y.dtype for x, y in zip(before, after))
    # continuing from the file equals continuing in memory (up to float64 rounding: BLAS
    # kernels may round differently for tensors at other addresses)
    b_mem, st_mem = model(idx[:, 23:], state=state)
    b_file, st_file = model(idx[:, 23:], state=loaded)
    torch.testing.assert_close(b_file, b_mem, rtol=1e-12, atol=1e-12)
    for x, y in zip(_tensors(st_file), _tensors(st_mem), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # and the two calls equal one uninterrupted call
    torch.testing.assert_close(torch.cat([a, b_file], 1), full, rtol=1e-10, atol=1e-10)
    info = read_state_info(path)
    assert info["family"] == family and info["batch_size"] == 2 and info["source"] == "test"


def _cms_lm(variant: str = "nested", seed: int = 0) -> LanguageModel:
    cfg = ModelConfig(vocab_size=32, dim=16, n_layers=2, n_heads=2, init_std=0.2)
    over = dict(periods=(2, 4), hidden_mult=1.0, lr=0.05, lr_max=1.0, variant=variant)
    with torch.device("meta"):
        blocks = [Block(16, CausalSelfAttention(16, 2), ContinuumMemory(16, CMSConfig(**over)), 1e-6)
                  for _ in range(2)]  # fmt: skip
        model = LanguageModel(cfg, blocks)
    model = model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model.to(F64)


def test_cms_state_round_trips(tmp_path):
    """CMS state: NamedTuples of NamedTuples, weight pairs, pending inputs, ints and None."""
    model = _cms_lm("nested")
    idx = torch.randint(0, 32, (3, 21))
    full, _ = model(idx)
    a, state = model(idx[:, :11], return_state=True)
    assert isinstance(state.layers[0][1], CMSState)
    loaded = load_state(save_state(state, tmp_path / "c.safetensors", model), model)
    assert type(loaded.layers[0][1].levels[0]) is type(state.layers[0][1].levels[0])
    assert loaded.layers[0][1].position == state.layers[0][1].position == 11
    assert all(torch.equal(x, y) for x, y in zip(_tensors(state), _tensors(loaded), strict=True))
    b, _ = model(idx[:, 11:], state=loaded)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-10, atol=1e-10)


def test_fresh_state_without_tensors_round_trips(tmp_path):
    model = _small("titans")
    state = model.init_state(4)  # NeuralMemoryState(None, None) per block: no tensors at all
    path = save_state(state, tmp_path / "fresh.safetensors", model)
    assert read_state_info(path)["batch_size"] is None
    loaded = load_state(path, model, batch_size=1)  # a tensor-free state fits any batch
    assert loaded == state


class _Extra(NamedTuple):
    count: int
    scale: float
    flag: bool
    name: str
    t: torch.Tensor
    nothing: None = None


def test_scalar_types_survive(tmp_path):
    model = _small("titans", n_layers=1)
    t = torch.arange(6.0).view(2, 3)
    state = ModelState([(_Extra(3, 1.0, True, "x", t), [t * 2, (5, 2.5), {"k": t}])], position=7)
    path = save_state(state, tmp_path / "x.safetensors", model)
    with pytest.raises(StateFileError, match="which this model's state does not use"):
        read_state(path)  # only nestlearn's state classes, or those named, are constructed
    loaded = read_state(path, classes=(_Extra,))  # the format keeps any tree
    with pytest.raises(StateFileError, match="which this model's state does not use"):
        load_state(path, model, batch_size=2)
    e, rest = loaded.layers[0]
    assert isinstance(e, _Extra) and isinstance(loaded.layers[0], tuple)
    assert (e.count, e.scale, e.flag, e.name, e.nothing) == (3, 1.0, True, "x", None)
    assert type(e.count) is int and type(e.scale) is float and type(e.flag) is bool
    assert torch.equal(e.t, t) and isinstance(rest, list) and torch.equal(rest[0], t * 2)
    assert rest[1] == (5, 2.5) and loaded.position == 7 and torch.equal(rest[2]["k"], t)
    odd = ModelState([(t, t[:1])], 0)  # leading dims 2 and 1: which is the batch?
    with pytest.raises(ValueError, match="ambiguous; pass batch_size="):
        save_state(odd, tmp_path / "odd.safetensors", model)
    save_state(odd, tmp_path / "odd.safetensors", model, batch_size=2)
    assert read_state_info(tmp_path / "odd.safetensors")["batch_size"] == 2


def test_write_is_atomic_and_overwrites(tmp_path):
    model = _small("titans")
    _, state = model(torch.randint(0, 50, (1, 9)), return_state=True)
    path = tmp_path / "s.safetensors"
    save_state(state, path, model)
    first = path.read_bytes()
    _, state2 = model(torch.randint(0, 50, (1, 5)), state=state)
    save_state(state2, path, model)
    assert path.read_bytes() != first
    bad = ModelState([(object(), None), (None, None)], 0)
    with pytest.raises(TypeError, match="cannot save a object"):
        save_state(bad, path, model)
    assert load_state(path, model).position == 14  # the failed save left the file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]  # no temp files


def test_another_model_is_refused_naming_both(tmp_path):
    model = _small("titans")
    _, state = model(torch.randint(0, 50, (1, 9)), return_state=True)
    path = save_state(state, tmp_path / "s.safetensors", model, source="runs/a")
    with pytest.raises(StateFileError, match=r"titans model .*from runs/a.*transformer model"):
        load_state(path, _small("transformer"), name="runs/b")
    with pytest.raises(StateFileError, match=r"dim=32 in the file, 64 here"):
        load_state(path, _small("titans", dim=64))
    other_weights = _small("titans", seed=1)
    with pytest.raises(StateFileError, match="weights differ"):
        load_state(path, other_weights)
    assert load_state(path, other_weights, check_weights=False).position == 9


def test_batch_mismatch_is_refused(tmp_path):
    model = _small("deltanet")
    _, state = model(torch.randint(0, 50, (2, 5)), return_state=True)
    path = save_state(state, tmp_path / "s.safetensors", model)
    with pytest.raises(StateFileError, match="holds 2 sequence.*runs 1"):
        load_state(path, model, batch_size=1)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    model = _small("titans")
    _, state = model(torch.randint(0, 50, (1, 9)), return_state=True)
    good = save_state(state, tmp_path / "s.safetensors", model).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a state file at all")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    for p, needle in [
        (cut, "not a readable"),
        (junk, "not a readable"),
        (plain, "not a nestlearn"),
    ]:
        with pytest.raises(StateFileError, match=needle):
            load_state(p, model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors", model)


def _forge(path: Path, model: LanguageModel, structure: dict) -> None:
    """A well-formed file whose structure names an arbitrary class."""
    from nestlearn.models.state_io import config_hash, weights_fingerprint

    meta = {"format": "nestlearn-state", "version": "1", "family": model.cfg.family,
            "config": json.dumps(model.cfg.to_dict(), sort_keys=True), "source": "",
            "config_hash": config_hash(model), "weights": weights_fingerprint(model),
            "batch_size": "null", "structure": json.dumps(structure)}  # fmt: skip
    save_file({}, str(path), metadata=meta)


@pytest.mark.parametrize(
    "cls, needle",
    [
        ("os:system", "does not exist"),  # a function, not a class: never called
        ("collections:OrderedDict", "not a dataclass"),
        ("nestlearn_not_imported_module:Thing", "not loaded"),
    ],
)
def test_loading_constructs_only_known_plain_types(tmp_path, cls, needle):
    model = _small("titans")
    path = tmp_path / "forged.safetensors"
    _forge(path, model, {"dataclass": cls, "fields": {}})
    with pytest.raises(StateFileError, match=needle):
        load_state(path, model)
    # a known class with other fields than the code has (a state file from another version)
    _forge(path, model, {"dataclass": "nestlearn.models.skeleton:ModelState",
                         "fields": {"layers": {"list": []}, "pos": 0}})  # fmt: skip
    with pytest.raises(StateFileError, match="re-create the state file"):
        load_state(path, model)
