"""The MAD synthetic tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures", arXiv 2403.17844), reported by the Nested Learning paper in Table 4.

Six generators with MAD's baseline settings (its ``configs/tasks/*.yml``):

=========================== ===== ======= ==================================================
task                        vocab seq_len other
=========================== ===== ======= ==================================================
``in_context_recall``       16    128     multi-query: every repeated key's value is scored
``noisy_in_context_recall`` 32    128     16 noise tokens, 20% of pairs replaced by noise
``fuzzy_in_context_recall`` 16    128     keys and values are 1-3 token motifs
``selective_copying``       16    256     copy 16 tokens scattered among blanks
``compression``             16    32      rebuild the whole sequence from its last position
``memorization``            256   32      a fixed key->value map learned in the weights
=========================== ===== ======= ==================================================

MAD trains on 12,800 examples (256 for memorization) and tests on 1,280; each task is then
repeated at harder settings (larger vocabularies, longer sequences, fewer examples; see
:data:`MAD_DIFFICULTY`) and a task's score is the mean accuracy over those runs, each the best
over learning rates {1e-4, 5e-4, 1e-3} and weight decay {0, 0.1}. The paper's Table 4 names five
of the six (no noisy recall).

Target alignment (as in MAD): ``targets[t]`` is what the output at position ``t`` must be.
The recall tasks train as plain language modelling (targets = inputs shifted by one) and test
only at the values of keys seen before; the other tasks carry their masked targets in both
splits. Deliberate differences from MAD's code, each a fix: selective copying draws its blank
positions from the seeded generator (MAD uses numpy's global state there); compression marks
noise positions as ignored in the targets when ``frac_noise > 0`` (MAD returns the noisy
inputs); fuzzy recall always places the probed pair before the final probe, and noisy recall
always keeps one real pair (MAD's draws can miss both, leaving an unanswerable probe).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import permutations

import numpy as np

from nestlearn.data.synthetic.common import IGNORE_INDEX, TokenSegment, TokenTask, make_rng

MAD_BASELINES: dict[str, dict] = {
    "in_context_recall": {"vocab_size": 16, "seq_len": 128},
    "noisy_in_context_recall": {
        "vocab_size": 32,
        "seq_len": 128,
        "noise_vocab_size": 16,
        "frac_noise": 0.2,
    },
    "fuzzy_in_context_recall": {
        "vocab_size": 16,
        "seq_len": 128,
        "k_motif_size": 3,
        "v_motif_size": 3,
    },
    "selective_copying": {"vocab_size": 16, "seq_len": 256, "num_tokens_to_copy": 16},
    "compression": {"vocab_size": 16, "seq_len": 32},
    "memorization": {"vocab_size": 256, "seq_len": 32},
}
"""MAD's baseline setting of each task."""

MAD_TRAIN_EXAMPLES = {"memorization": 256}
MAD_DEFAULT_TRAIN = 12_800
MAD_TEST_EXAMPLES = 1_280

MAD_DIFFICULTY: dict[str, dict[str, list]] = {
    "in_context_recall": {"vocab_size": [32, 64, 128], "seq_len": [256, 512, 1024]},
    "noisy_in_context_recall": {
        "vocab_size": [48, 80, 144],
        "seq_len": [256, 512, 1024],
        "frac_noise": [0.4, 0.6, 0.8],
    },
    "fuzzy_in_context_recall": {"vocab_size": [32, 64, 128], "seq_len": [256, 512, 1024]},
    "selective_copying": {
        "vocab_size": [32, 64, 128],
        "seq_len": [512, 1024],
        "num_tokens_to_copy": [32, 64, 96],
    },
    "compression": {"vocab_size": [32, 64, 128], "seq_len": [64, 128, 256]},
    "memorization": {"vocab_size": [512, 1024, 2048, 4096, 8192]},
}
"""MAD's harder settings: each value replaces the baseline one at a time (plus fewer training
examples, 6,400 / 3,200 / 1,600 / 800, for all but memorization)."""


@functools.lru_cache(maxsize=64)
def _motifs(lo: int, hi: int, size: int) -> tuple[tuple[int, ...], ...]:
    """All ordered ``size``-tuples of distinct tokens of ``range(lo, hi)`` (MAD's motifs).

    MAD shuffles this list and then draws from it uniformly; drawing a uniform index from the
    unshuffled list has the same distribution, so the list is cached instead.
    """
    return tuple(permutations(range(lo, hi), size))


def in_context_recall(
    rng: np.random.Generator,
    *,
    vocab_size: int = 16,
    seq_len: int = 128,
    is_training: bool = True,
    multi_query: bool = True,
    noise_vocab_size: int = 0,
    frac_noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Key-value pairs from one in-sequence map; recall the value of every repeated key.

    Keys come from the lower half of the non-noise vocabulary, values from the upper half; a key
    keeps its value within a sequence. Single-query mode ends with a copy token (the last id)
    and scores only the final probe. Returns ``(inputs, targets)`` of length ``seq_len - 1``
    (multi-query) or ``seq_len`` (single query).
    """
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if not 0 <= frac_noise < 1:
        raise ValueError(f"frac_noise must be in [0, 1), got {frac_noise}")
    copy_token = vocab_size - 1
    plain = (vocab_size if multi_query else vocab_size - 1) - noise_vocab_size
    n_keys = plain // 2
    pairs = seq_len // 2
    keep = rng.integers(pairs - 1)  # at least one real pair (MAD may draw the unused last slot)
    kv: dict[int, int] = {}
    inputs: list[int] = []
    targets: list[int] = []
    for i in range(pairs - 1):
        if frac_noise > 0 and i != keep and rng.random() < frac_noise:
            inputs += [int(t) for t in rng.integers(plain, plain + noise_vocab_size, size=2)]
            targets += [IGNORE_INDEX, IGNORE_INDEX]
            continue
        k = int(rng.integers(n_keys))
        seen = k in kv
        if not seen:
            kv[k] = int(rng.integers(n_keys, plain))
        inputs += [k, kv[k]]
        targets += [IGNORE_INDEX, kv[k] if (seen and multi_query) else IGNORE_INDEX]
    probe = list(kv)[int(rng.integers(len(kv)))]
    if not multi_query:
        inputs.append(copy_token)
        targets.append(IGNORE_INDEX)
    inputs += [probe, kv[probe]]
    targets += [IGNORE_INDEX, kv[probe]]
    x, y = np.asarray(inputs, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    return (x[:-1], x[1:]) if is_training else (x[:-1], y[1:])


def noisy_in_context_recall(
    rng: np.random.Generator,
    *,
    vocab_size: int = 32,
    seq_len: int = 128,
    noise_vocab_size: int = 16,
    frac_noise: float = 0.2,
    is_training: bool = True,
    multi_query: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """In-context recall with a fraction of the pairs replaced by noise-token pairs."""
    return in_context_recall(
        rng,
        vocab_size=vocab_size,
        seq_len=seq_len,
        is_training=is_training,
        multi_query=multi_query,
        noise_vocab_size=noise_vocab_size,
        frac_noise=frac_noise,
    )


def fuzzy_in_context_recall(
    rng: np.random.Generator,
    *,
    vocab_size: int = 16,
    seq_len: int = 128,
    k_motif_size: int = 3,
    v_motif_size: int = 3,
    is_training: bool = True,
    multi_query: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Recall where keys and values are motifs of 1..k (1..v) distinct tokens.

    At test time every key has the maximum motif size. One designated key-value pair is placed
    at a random position before the end and probed last; the sequence is left-padded with a pad
    token to ``seq_len`` (``seq_len`` tokens returned after the autoregressive shift).
    """
    copy_token = vocab_size - 1
    pad_token = vocab_size - 2 if not multi_query else vocab_size - 1
    plain = vocab_size - 2 if not multi_query else vocab_size - 1
    k_sizes = list(range(1, k_motif_size + 1)) if is_training else [k_motif_size]
    keys = {s: _motifs(0, plain // 2, s) for s in k_sizes}
    values = {s: _motifs(plain // 2, plain, s) for s in range(1, v_motif_size + 1)}
    k_probe_size = k_sizes[int(rng.integers(len(k_sizes)))]
    v_probe_size = int(rng.integers(1, v_motif_size + 1))
    k_probe = keys[k_probe_size][rng.integers(len(keys[k_probe_size]))]
    v_probe = values[v_probe_size][rng.integers(len(values[v_probe_size]))]
    probe_len = k_probe_size + v_probe_size
    stop = seq_len - probe_len - (k_motif_size + v_motif_size)
    # the probed pair must occur before the final probe: start it early enough that the loop,
    # which adds at most k + v tokens per step, cannot end first (MAD's bound can miss it)
    probe_at = int(rng.integers(max(1, stop - (k_motif_size + v_motif_size))))
    placed = False
    kv: dict[tuple[int, ...], tuple[int, ...]] = {}
    inputs: list[int] = []
    targets: list[int] = []
    while len(inputs) < stop:
        k_size = k_sizes[int(rng.integers(len(k_sizes)))]
        v_size = int(rng.integers(1, v_motif_size + 1))
        if len(inputs) >= probe_at and not placed:
            inputs += [*k_probe, *v_probe]
            targets += [IGNORE_INDEX] * probe_len
            kv[k_probe] = v_probe
            placed = True
            continue
        k = keys[k_size][rng.integers(len(keys[k_size]))]
        if k == k_probe:
            v, placed = v_probe, True
        elif k in kv:
            v = kv[k]
        else:
            v = values[v_size][rng.integers(len(values[v_size]))]
        seen = k in kv
        kv[k] = v
        inputs += [*k, *v]
        targets += [IGNORE_INDEX] * len(k)
        targets += list(v) if (seen and multi_query) else [IGNORE_INDEX] * len(v)
    if not multi_query:
        inputs.append(copy_token)
        targets.append(IGNORE_INDEX)
    inputs += [*k_probe, *v_probe]
    targets += [IGNORE_INDEX] * k_probe_size + list(v_probe)
    pad = max(0, seq_len + 1 - len(inputs))
    x = np.asarray([pad_token] * pad + inputs, dtype=np.int64)
    y = np.asarray([IGNORE_INDEX] * pad + targets, dtype=np.int64)
    return (x[:-1], x[1:]) if is_training else (x[:-1], y[1:])


def selective_copying(
    rng: np.random.Generator,
    *,
    vocab_size: int = 16,
    seq_len: int = 256,
    num_tokens_to_copy: int = 16,
    is_training: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens scattered among blanks, then a copy token: output them in order.

    Layout: ``[tokens with blanks] [copy] [blank x num_tokens_to_copy]``; the outputs at the
    trailing blanks must be the tokens. ``is_training`` does not change the sample.
    """
    copy_token, blank = vocab_size - 1, vocab_size - 2
    n_blank = seq_len - 2 * num_tokens_to_copy - 1
    if n_blank <= 0:
        raise ValueError(
            f"seq_len={seq_len} must exceed 2 * num_tokens_to_copy + 1 = {2 * num_tokens_to_copy + 1}"
        )
    to_copy = rng.integers(0, vocab_size - 2, size=num_tokens_to_copy)
    where = rng.integers(0, num_tokens_to_copy, size=n_blank)
    body = np.insert(to_copy, where, blank)
    x = np.concatenate([body, [copy_token], np.full(num_tokens_to_copy, blank)]).astype(np.int64)
    y = np.concatenate([np.full(seq_len - num_tokens_to_copy, IGNORE_INDEX), to_copy])
    return x, y.astype(np.int64)


def compression(
    rng: np.random.Generator,
    *,
    vocab_size: int = 16,
    seq_len: int = 32,
    noise_vocab_size: int = 0,
    frac_noise: float = 0.0,
    is_training: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens ending in a compression token; the targets are the whole input.

    MAD solves it as an autoencoder: the sequence is decoded from the hidden state at the last
    position (see ``nestlearn.studies.recall``).
    """
    plain = vocab_size - 1 - noise_vocab_size
    x = np.concatenate([rng.integers(0, plain, size=seq_len - 1), [vocab_size - 1]])
    y = x.copy()
    if frac_noise > 0:
        noise = rng.random(seq_len - 1) < frac_noise
        x[:-1][noise] = rng.integers(plain, plain + noise_vocab_size, size=int(noise.sum()))
        y[:-1][noise] = IGNORE_INDEX
    return x.astype(np.int64), y.astype(np.int64)


def memorization_map(vocab_size: int, seed: int) -> dict[int, int]:
    """MAD's fixed key -> value map over ``vocab_size - 1`` tokens (the last is the insert token)."""
    rng = make_rng(seed, "mad-memorization-map", vocab_size)
    plain = vocab_size - 1
    keys = rng.permutation(np.arange(plain // 2))
    values = rng.permutation(np.arange(plain // 2, plain))
    return {int(k): int(v) for k, v in zip(keys, values)}


def memorization(
    rng: np.random.Generator,
    *,
    vocab_size: int = 256,
    seq_len: int = 32,
    kv_map: dict[int, int] | None = None,
    seed: int = 0,
    is_training: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``key, insert`` pairs; the output at each insert token must be the key's fixed value.

    The map is the same in every sequence (``kv_map``, default :func:`memorization_map` of
    ``seed``), so it can only be learned into the weights.
    """
    kv_map = kv_map if kv_map is not None else memorization_map(vocab_size, seed)
    insert = vocab_size - 1
    keys = np.asarray(sorted(kv_map), dtype=np.int64)
    k = keys[rng.integers(len(keys), size=seq_len // 2)]
    x = np.stack([k, np.full_like(k, insert)], axis=1).reshape(-1)
    v = np.asarray([kv_map[int(i)] for i in k], dtype=np.int64)
    y = np.stack([np.full_like(k, IGNORE_INDEX), v], axis=1).reshape(-1)
    return x, y


MAD_TASKS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "in_context_recall": in_context_recall,
    "noisy_in_context_recall": noisy_in_context_recall,
    "fuzzy_in_context_recall": fuzzy_in_context_recall,
    "selective_copying": selective_copying,
    "compression": compression,
    "memorization": memorization,
}
"""The six MAD generators: ``fn(rng, **settings) -> (inputs [T], targets [T])``."""


def mad_segment(
    task: str, num_examples: int, *, split: str, seed: int = 0, **settings
) -> TokenSegment:
    """``num_examples`` samples of MAD ``task`` (baseline settings updated by ``settings``)."""
    if task not in MAD_TASKS:
        raise ValueError(f"unknown MAD task {task!r}; choose from {', '.join(MAD_TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    cfg = {**MAD_BASELINES[task], **settings}
    if task == "memorization":
        cfg.setdefault("kv_map", memorization_map(cfg["vocab_size"], seed))
    rng = make_rng(seed, "mad", task, split)
    pairs = [MAD_TASKS[task](rng, is_training=split == "train", **cfg) for _ in range(num_examples)]
    meta = {k: v for k, v in cfg.items() if k != "kv_map"}
    return TokenSegment(
        inputs=np.stack([p[0] for p in pairs]),
        targets=np.stack([p[1] for p in pairs]),
        name=f"{task}:{split}",
        meta=meta,
    )


def mad_task(
    task: str,
    *,
    num_train: int | None = None,
    num_test: int = MAD_TEST_EXAMPLES,
    seed: int = 0,
    **settings,
) -> TokenTask:
    """A MAD task at its baseline setting (override any with ``settings``)."""
    n_train = (
        num_train if num_train is not None else MAD_TRAIN_EXAMPLES.get(task, MAD_DEFAULT_TRAIN)
    )
    train = mad_segment(task, n_train, split="train", seed=seed, **settings)
    test = mad_segment(task, num_test, split="test", seed=seed, **settings)
    vocab = {**MAD_BASELINES[task], **settings}["vocab_size"]
    return TokenTask(
        name=task,
        vocab_size=int(vocab),
        train=[train],
        test=[test],
        readout="autoencoder" if task == "compression" else "lm",
        meta={**train.meta, "seed": seed, "num_train": n_train, "num_test": num_test},
    )
