"""MQAR and MAD generators: labels recomputed independently from the inputs, seeded streams."""

from __future__ import annotations

import numpy as np
import pytest

from nestlearn.data.synthetic.common import IGNORE_INDEX
from nestlearn.data.synthetic.mad import (
    MAD_BASELINES,
    MAD_TASKS,
    mad_segment,
    mad_task,
    memorization_map,
)
from nestlearn.data.synthetic.mqar import mqar_segment, mqar_task


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_targets_are_the_values_of_the_queried_keys(random_non_queries):
    V, T, kv = 128, 64, 8
    seg = mqar_segment(
        300, vocab_size=V, seq_len=T, num_kv_pairs=kv, seed=1, random_non_queries=random_non_queries
    )
    assert seg.inputs.shape == seg.targets.shape == (300, T)
    for x, y in zip(seg.inputs, seg.targets):
        keys, values = x[0 : 2 * kv : 2], x[1 : 2 * kv : 2]
        assert len(set(keys)) == kv and len(set(values)) == kv
        assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2
        pairs = dict(zip(keys.tolist(), values.tolist()))
        scored = np.flatnonzero(y != IGNORE_INDEX)
        assert len(scored) == kv and scored.min() >= 2 * kv
        assert sorted(x[scored].tolist()) == sorted(keys.tolist())  # every key queried once
        for t in scored:
            assert y[t] == pairs[int(x[t])]
        rest = np.setdiff1d(np.arange(2 * kv, T), scored)
        if not random_non_queries:
            assert (x[rest] == 0).all()
        else:
            assert (x[rest] != 0).mean() > 0.9


def test_mqar_gaps_follow_the_power_law():
    seg = mqar_segment(2000, vocab_size=256, seq_len=128, num_kv_pairs=4, seed=0)
    first = [np.flatnonzero(y != IGNORE_INDEX).min() - 8 for y in seg.targets]
    # with a = 0.01 nearly all mass sits on small gaps; uniform gaps would average ~30 slots
    assert np.median(first) < 6


def test_mqar_is_seeded_and_validates():
    a = mqar_task(vocab_size=64, train_settings=((32, 4),), num_train=50, num_test=20, seed=3)
    b = mqar_task(vocab_size=64, train_settings=((32, 4),), num_train=50, num_test=20, seed=3)
    c = mqar_task(vocab_size=64, train_settings=((32, 4),), num_train=50, num_test=20, seed=4)
    assert np.array_equal(a.train[0].inputs, b.train[0].inputs)
    assert not np.array_equal(a.train[0].inputs, c.train[0].inputs)
    assert not np.array_equal(a.train[0].inputs[:20], a.test[0].inputs)
    with pytest.raises(ValueError, match="must exceed seq_len"):
        mqar_segment(2, vocab_size=64, seq_len=64)
    with pytest.raises(ValueError, match="needs seq_len"):
        mqar_segment(2, vocab_size=256, seq_len=64, num_kv_pairs=20)


def _recall_reference(x: np.ndarray, plain: int) -> dict[int, int]:
    """Positions whose target is the value of a key already seen, from an independent scan."""
    seen: dict[int, int] = {}
    expect: dict[int, int] = {}
    for t in range(0, len(x) - 1, 2):
        k, v = int(x[t]), int(x[t + 1])
        if k >= plain // 2:  # noise pair
            continue
        if k in seen:
            expect[t] = seen[k]
        seen[k] = v
    return expect


@pytest.mark.parametrize("task", ["in_context_recall", "noisy_in_context_recall"])
def test_mad_recall_scores_exactly_the_repeated_keys(task):
    cfg = MAD_BASELINES[task]
    plain = cfg["vocab_size"] - cfg.get("noise_vocab_size", 0)
    test = mad_segment(task, 200, split="test", seed=2)
    for x, y in zip(test.inputs, test.targets):
        full = np.append(x, -1)  # the dropped final value does not matter for the scan
        expect = _recall_reference(full, plain)
        scored = {int(t): int(y[t]) for t in np.flatnonzero(y != IGNORE_INDEX)}
        assert scored == expect
        assert len(scored) > 0
    train = mad_segment(task, 20, split="train", seed=2)
    # training is plain language modelling: the targets are the inputs shifted by one
    assert np.array_equal(train.inputs[:, 1:], train.targets[:, :-1])
    if task.startswith("noisy"):
        assert (test.inputs >= plain).any()  # noise tokens are present, never scored
        assert not np.isin(test.targets[test.targets != IGNORE_INDEX], np.arange(plain, 32)).any()


def test_mad_fuzzy_recall_probe_occurs_before_it_is_asked():
    seg = mad_segment("fuzzy_in_context_recall", 200, split="test", seed=0)
    T = 128
    assert seg.inputs.shape == (200, T)
    for x, y in zip(seg.inputs, seg.targets):
        scored = y != IGNORE_INDEX
        v = 0  # the final value motif: the trailing run of scored positions
        while v < T and scored[T - 1 - v]:
            v += 1
        assert 1 <= v <= 3
        # targets[t] is the token after inputs[t]: the value's first token follows the key,
        # whose 3 tokens (the full motif size at test time) end at input T - v
        key = x[T - v - 2 : T - v + 1].tolist()
        assert max(key) < 7 <= min(y[T - v :])  # key tokens 0..6, value tokens 7..14
        pair = key + y[T - v :].tolist()
        before = x[: T - v - 2].tolist()
        assert any(before[i : i + len(pair)] == pair for i in range(len(before)))


def test_mad_selective_copying_targets_the_tokens_in_order():
    seg = mad_segment("selective_copying", 100, split="test", seed=0)
    n = MAD_BASELINES["selective_copying"]["num_tokens_to_copy"]
    for x, y in zip(seg.inputs, seg.targets):
        blank, copy = 14, 15
        body = x[: list(x).index(copy)]
        assert (y[: len(y) - n] == IGNORE_INDEX).all()
        assert np.array_equal(y[-n:], body[body != blank])
        assert (x[-n:] == blank).all()


def test_mad_compression_and_memorization_targets():
    comp = mad_segment("compression", 50, split="test", seed=0)
    assert np.array_equal(comp.inputs, comp.targets) and (comp.inputs[:, -1] == 15).all()
    assert mad_task("compression", num_train=4, num_test=4).readout == "autoencoder"
    kv = memorization_map(256, seed=0)
    assert len(kv) == 127 and len(set(kv.values())) == 127
    for split in ("train", "test"):
        seg = mad_segment("memorization", 50, split=split, seed=0)
        x, y = seg.inputs, seg.targets
        assert (x[:, 1::2] == 255).all() and (y[:, 0::2] == IGNORE_INDEX).all()
        assert all(kv[int(k)] == int(v) for k, v in zip(x[:, 0::2].ravel(), y[:, 1::2].ravel()))


@pytest.mark.parametrize("task", sorted(MAD_TASKS))
def test_mad_streams_are_seeded(task):
    a = mad_segment(task, 5, split="test", seed=7)
    b = mad_segment(task, 5, split="test", seed=7)
    c = mad_segment(task, 5, split="test", seed=8)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.max() < MAD_BASELINES[task]["vocab_size"] and a.inputs.min() >= 0
