"""Property-based fuzz of the files nestlearn reads back: checkpoint meta.json and state files.

Whatever the bytes, loading either succeeds with exactly the data that was written or raises
the loader's own error (``CheckpointError`` / ``StateFileError``) whose message names the file:
never another exception (a traceback in the CLI), never damaged data accepted.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

import nestlearn.train.checkpoint as ckmod
from nestlearn.models import ModelConfig, StateFileError, build_model, load_state, save_state
from nestlearn.models.state_io import tensors_digest
from nestlearn.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["/etc/hostname", "../model.safetensors", "model.safetensors", "i", "s"]),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every path into a JSON tree (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(tree, data):
    """Replace, delete or add one node of a JSON tree, chosen by hypothesis."""
    tree = copy.deepcopy(tree)
    paths = list(_paths(tree))
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if not path:
        return data.draw(json_value)
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(json_value)
    else:
        parent[key] = data.draw(json_value)
    return tree


# ------------------------------------------------------------------------ checkpoint meta.json
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = {"w": torch.randn(4, 3), "b": torch.zeros(3)}
    opt = {
        "state": {0: {"m": torch.ones(2), "step": 3}},
        "param_groups": [{"lr": 0.1, "params": [0]}],
    }
    path = save_checkpoint(root, 5, model, opt, {"tokens_seen": 80}, {"torch_cpu": torch.get_rng_state()},
                           config={"train": {"steps": 9}})  # fmt: skip
    return path, model


@SETTINGS
@given(data=st.data(), reseal=st.booleans())
def test_fuzzed_checkpoint_meta_is_refused_or_loads_the_true_weights(
    checkpoint, tmp_path, data, reseal
):
    """``reseal``: the mutated meta.json gets a fresh self-checksum, as a consistent but malformed
    file would have, so the deeper checks (integrity map, paths, step, structures) are reached."""
    src, model = checkpoint
    work = tmp_path / "step_00000005"
    if not work.exists():
        shutil.copytree(src, work)
    meta = json.loads((src / "meta.json").read_text())
    bad = _mutate(meta, data)
    if reseal and isinstance(bad, dict):
        bad["meta_sha256"] = ckmod._meta_digest(bad)
    (work / "meta.json").write_text(json.dumps(bad))
    try:
        got = load_checkpoint(work)
    except CheckpointError as e:
        assert str(work) in str(e) or "malformed" in str(e) or "missing tensor" in str(e), str(e)
        return
    # accepted: then the weights are the true ones, and the step the folder's
    assert got.step == 5 and sorted(got.model) == sorted(model)
    assert all(torch.equal(got.model[k], model[k]) for k in model)


@SETTINGS
@given(
    name=st.sampled_from(["model.safetensors", "optim.safetensors", "config.yaml", "meta.json"]),
    offset=st.integers(0, 10**6),
    byte=st.integers(1, 255),
)
def test_any_flipped_byte_in_a_checkpoint_is_caught(checkpoint, tmp_path, name, offset, byte):
    src, _ = checkpoint
    work = tmp_path / "step_00000005"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    blob = bytearray((work / name).read_bytes())
    blob[offset % len(blob)] ^= byte
    (work / name).write_bytes(bytes(blob))
    try:
        load_checkpoint(work)
    except CheckpointError:
        return
    # accepted: only a flip that leaves meta.json's JSON content as it was (e.g. a space that
    # became a tab) may pass
    assert name == "meta.json"
    assert json.loads(bytes(blob)) == json.loads((src / name).read_bytes())


# ---------------------------------------------------------------------------------- state files
@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(family="titans", vocab_size=32, dim=16, n_layers=1, n_heads=2, max_seq_len=32)
    model = build_model(cfg, seed=0)
    _, state = model(torch.randint(0, 32, (1, 11)), return_state=True)
    path = save_state(state, tmp_path_factory.mktemp("state") / "s.safetensors", model)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return model, meta, tensors


def _load_and_use(path, model):
    try:
        state = load_state(path, model, batch_size=1)
    except (StateFileError, FileNotFoundError) as e:
        assert str(path) in str(e), str(e)
        return None
    model(torch.tensor([[1, 2, 3]]), state=state)  # an accepted state runs
    return state


@SETTINGS
@given(data=st.data())
def test_fuzzed_state_structure_is_refused_or_works(state_file, tmp_path, data):
    model, meta, tensors = state_file
    structure = json.loads(meta["structure"])
    bad = dict(meta, structure=json.dumps(_mutate(structure, data)))
    path = tmp_path / "s.safetensors"
    path.write_bytes(save(tensors, metadata=bad))
    _load_and_use(path, model)


@SETTINGS
@given(
    key=st.sampled_from(["family", "config", "config_hash", "weights", "batch_size", "version",
                         "format", "structure", "source"]),
    value=st.one_of(st.text(max_size=30), json_value.map(json.dumps)),
)  # fmt: skip
def test_fuzzed_state_metadata_is_refused_or_works(state_file, tmp_path, key, value):
    model, meta, tensors = state_file
    path = tmp_path / "s.safetensors"
    path.write_bytes(save(tensors, metadata=dict(meta, **{key: value})))
    _load_and_use(path, model)


@SETTINGS
@given(data=st.data())
def test_fuzzed_state_tensors_are_refused_or_work(state_file, tmp_path, data):
    model, meta, tensors = state_file
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name].clone()
    how = data.draw(st.sampled_from(["inf", "nan", "shape", "dtype", "drop", "scale"]))
    bad = dict(tensors)
    if how in ("inf", "nan") and t.is_floating_point() and t.numel():
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = float(how)
        bad[name] = t
    elif how == "shape":
        bad[name] = torch.zeros(*[data.draw(st.integers(1, 5)) for _ in range(t.ndim or 1)])
    elif how == "dtype":
        bad[name] = t.to(data.draw(st.sampled_from([torch.int64, torch.float16, torch.uint8])))
    elif how == "drop":
        del bad[name]
    else:
        bad[name] = t * data.draw(st.floats(-1e3, 1e3))
    path = tmp_path / "s.safetensors"
    path.write_bytes(save(bad, metadata=meta))
    changed = tensors_digest(bad) != meta["tensors_sha256"]
    assert (_load_and_use(path, model) is None) == changed  # the sha256 catches every change
    # without the checksum (files from before it existed) the content checks still hold
    path.write_bytes(save(bad, metadata={k: v for k, v in meta.items() if k != "tensors_sha256"}))
    state = _load_and_use(path, model)
    if how in ("inf", "nan", "drop") and t.is_floating_point() and t.numel():
        assert state is None, f"{how} in {name} was accepted"


@SETTINGS
@given(offset=st.integers(0, 10**6), byte=st.integers(1, 255))
def test_any_flipped_byte_of_a_state_file_is_caught(state_file, tmp_path, offset, byte):
    model, meta, tensors = state_file
    blob = bytearray(save(tensors, metadata=meta))
    blob[offset % len(blob)] ^= byte
    path = tmp_path / "s.safetensors"
    path.write_bytes(bytes(blob))
    try:
        state = load_state(path, model, batch_size=1)
    except (StateFileError, FileNotFoundError) as e:
        assert str(path) in str(e), str(e)
        return
    # a flip in the header's JSON whitespace or the free-text source label changes nothing
    want = load_state(save_state_bytes(tmp_path, tensors, meta), model, batch_size=1)
    assert [torch.equal(a, b) for a, b in zip(_leaves(state), _leaves(want))] == [True] * len(
        _leaves(want)
    )


def save_state_bytes(tmp_path, tensors, meta):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    return path


def _leaves(state):
    from nestlearn.models.state_check import tensor_leaves

    return tensor_leaves(state)
