"""Class-incremental text classification with a language model (arXiv 2512.24695 §9.1, Fig. 6).

Protocol (every choice the paper leaves open is listed in ``docs/continual.md``):

* **Tasks.** CLINC150: its 10 domains (``domains.json``), 15 intents each. Banking77: the 77
  intents in ``categories.json`` order, cut into 10 tasks of 7-8 intents. Task order is the
  file order (``shuffle_tasks`` reorders it with the seed).
* **Stream.** For each task, ``shots`` labelled training utterances per intent, shuffled with
  the seed, are written as demonstrations ``"Query: <text>\\nIntent: <label>\\n"`` (label =
  the intent name with ``_`` as spaces) and appended to one growing token stream.
* **Memory budget.** Every method answers a query with the same attention context: the most
  recent ``window`` tokens of the stream, cut at a demonstration boundary. What differs is what
  happens to demonstrations that fall out of the window:

  - ``icl``: nothing (the pretrained model, in-context learning only);
  - ``ewc``: after each task, the weights are fine-tuned on its demonstrations (label tokens'
    log-likelihood) with the elastic-weight-consolidation penalty of Kirkpatrick et al. (2017)
    over the earlier tasks' diagonal Fisher information;
  - ``hope``: Hope-Attention by ad-hoc level stacking (§7.3): each MLP becomes a CMS level that
    learns in context by eq. 71 (next-token gradient, chunk period ``periods``) while the whole
    stream is read, window after window; the fast weights carry across windows, the attention
    cache does not. With ``level_lr = 0`` it is exactly ``icl`` (tested).

* **Prediction.** Greedy decoding after ``"Intent:"`` constrained to the label token sequences of
  the classes seen so far (a prefix trie; forced tokens are fed in one call), so the answer is
  always one of the seen classes, as in class-incremental evaluation.
* **Metrics.** After task ``t``, accuracy on ``eval_per_class`` test utterances of every class
  seen so far, also split by the task each class came from: ``acc[t][i]``. Average accuracy is
  the mean over ``t`` of the all-seen accuracy; backward transfer is the mean over ``i < T-1`` of
  ``acc[T-1][i] - acc[i][i]`` (negative = forgetting).

The three methods are in ``learners.py``; this module reads the benchmarks, builds the stream,
decodes the answers and scores them.
"""

from __future__ import annotations

import copy
import csv
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nestlearn.studies.continual.learners import (
    Demo,
    EWCLearner,
    HopeLearner,
    Learner,
    frozen_transformer,
    reset_attention,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS",
    "METHODS",
    "CILData",
    "CILResult",
    "Demo",
    "EWCLearner",
    "HopeLearner",
    "Learner",
    "LabelTrie",
    "load_benchmark",
    "load_result",
    "run_class_incremental",
    "frozen_transformer",
    "reset_attention",
    "save_result",
]

BENCHMARKS = ("clinc", "banking")
METHODS = ("icl", "ewc", "hope")
PROMPT = "Query: {text}\nIntent:"


# ------------------------------------------------------------------ data
@dataclass
class CILData:
    """A class-incremental benchmark: classes grouped into tasks, utterances per class."""

    name: str
    tasks: list[list[str]]
    """Class names of each task, in task order."""
    train: dict[str, list[str]]
    test: dict[str, list[str]]

    @property
    def classes(self) -> list[str]:
        return [c for t in self.tasks for c in t]


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {what}. Pass --data-dir pointing at a folder with the layout of "
            "shared/datasets (clinc150/data_full.json.gz + domains.json, banking77/train.csv + "
            "test.csv + categories.json)."
        )
    return path


def load_benchmark(
    name: str, data_dir: str | Path, *, test_split: str = "test", seed: int = 0,
    shuffle_tasks: bool = False,
) -> CILData:  # fmt: skip
    """Read ``clinc`` or ``banking`` from ``data_dir`` (``test_split``: ``test`` or ``val``;
    Banking77 has no validation split, so ``val`` there holds out 10 train utterances per
    intent, which are then excluded from training)."""
    root = Path(data_dir)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if test_split not in ("test", "val"):
        raise ValueError(f"test_split must be 'test' or 'val', got {test_split!r}")
    train: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    if name == "clinc":
        d = root / "clinc150"
        with gzip.open(
            _need(d / "data_full.json.gz", "CLINC150 data"), "rt", encoding="utf-8"
        ) as f:
            data = json.load(f)
        domains = json.loads(_need(d / "domains.json", "CLINC150 domains").read_text("utf-8"))
        tasks = [list(v) for v in domains.values()]
        for text, label in data["train"]:
            train.setdefault(label, []).append(text)
        for text, label in data[test_split]:
            test.setdefault(label, []).append(text)
    else:
        d = root / "banking77"
        cats = json.loads(_need(d / "categories.json", "Banking77 labels").read_text("utf-8"))
        sizes = [len(cats) // 10 + (1 if i < len(cats) % 10 else 0) for i in range(10)]
        tasks, k = [], 0
        for s in sizes:
            tasks.append(list(cats[k : k + s]))
            k += s

        def read(path: Path) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    out.setdefault(row["category"], []).append(row["text"])
            return out

        train = read(_need(d / "train.csv", "Banking77 train split"))
        if test_split == "test":
            test = read(_need(d / "test.csv", "Banking77 test split"))
        else:
            for c in list(train):
                test[c], train[c] = train[c][-10:], train[c][:-10]
    if shuffle_tasks:
        random.Random(seed).shuffle(tasks)
    missing = [c for t in tasks for c in t if not train.get(c) or not test.get(c)]
    if missing:
        raise ValueError(f"{name}: no train or test utterances for classes {missing[:5]}")
    return CILData(name, tasks, train, test)


def label_text(label: str) -> str:
    """The label as the model reads and writes it: ``card_arrival`` -> ``card arrival``."""
    return label.replace("_", " ")


# ------------------------------------------------------------------ trie
class LabelTrie:
    """Token-sequence prefix tree over the label continuations ``" <label>\\n"``."""

    def __init__(self, labels: dict[str, list[int]]) -> None:
        self.root: dict[int, Any] = {}
        for name, ids in labels.items():
            if not ids:
                raise ValueError(f"label {name!r} encodes to no tokens")
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})
            if "$" in node:
                raise ValueError(f"labels {node['$']!r} and {name!r} encode identically")
            if any(k != "$" for k in node):
                raise ValueError(f"label {name!r} is a token prefix of another label")
            node["$"] = name


@torch.no_grad()
def predict(model: torch.nn.Module, state: Any, prompt: list[int], trie: LabelTrie) -> str:
    """Constrained greedy decoding of a label after ``prompt``, continuing ``state``."""
    dev = model.embed.weight.device
    logits, state = model(torch.tensor([prompt], device=dev), state=state)
    last = logits[0, -1]
    node, pending = trie.root, []
    while "$" not in node:
        options = [t for t in node if t != "$"]
        if len(options) > 1:
            if pending:
                logits, state = model(torch.tensor([pending], device=dev), state=state)
                last, pending = logits[0, -1], []
            tok = max(options, key=lambda t: float(last[t]))
        else:
            tok = options[0]
        pending.append(tok)
        node = node[tok]
    return str(node["$"])


# ------------------------------------------------------------------ driver
@dataclass
class CILResult:
    """One method on one benchmark."""

    benchmark: str
    method: str
    tasks: list[list[str]]
    acc: list[float] = field(default_factory=list)
    """Accuracy on all classes seen so far, after each task."""
    acc_matrix: list[list[float]] = field(default_factory=list)
    """``acc_matrix[t][i]``: accuracy on task ``i``'s classes after task ``t`` (``i <= t``)."""
    n_eval: list[int] = field(default_factory=list)
    average_accuracy: float = float("nan")
    final_accuracy: float = float("nan")
    backward_transfer: float = float("nan")
    stream_tokens: int = 0
    wall_time_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def _finish(res: CILResult) -> CILResult:
    T = len(res.acc)
    res.average_accuracy = sum(res.acc) / T if T else float("nan")
    res.final_accuracy = res.acc[-1] if T else float("nan")
    if T > 1:
        m = res.acc_matrix
        res.backward_transfer = sum(m[T - 1][i] - m[i][i] for i in range(T - 1)) / (T - 1)
    return res


def run_class_incremental(
    model: torch.nn.Module,
    tokenizer: Any,
    data: CILData,
    method: str,
    *,
    shots: int = 3,
    eval_per_class: int = 2,
    window: int = 1024,
    seed: int = 0,
    num_tasks: int | None = None,
    periods: Sequence[int] = (64, 256, 1024),
    level_lr: float = 1.0,
    hope_targets: str = "labels",
    ewc_lr: float = 3e-5,
    ewc_epochs: int = 2,
    ewc_batch_size: int = 8,
    ewc_lambda: float = 1e4,
    progress: Callable[[str], None] | None = None,
) -> CILResult:
    """Run ``method`` (``icl``, ``ewc`` or ``hope``) on ``data``; ``model`` is not modified.

    ``model`` must be a ``transformer``-family :class:`~nestlearn.models.LanguageModel` with
    SwiGLU MLPs for ``hope`` (they become the CMS levels). See the module docstring for the
    protocol; ``num_tasks`` keeps only the first tasks (a quick run).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    for name, v in (("shots", shots), ("eval_per_class", eval_per_class), ("window", window)):
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    say = progress or (lambda s: logger.info("%s", s))
    t0 = time.perf_counter()
    settings = {
        "shots": shots, "eval_per_class": eval_per_class, "window": window, "seed": seed,
    }  # fmt: skip
    model = copy.deepcopy(model).float()
    if method == "icl":
        learner: Learner = Learner(model, window)
    elif method == "hope":
        learner = HopeLearner(model, window, periods=periods, lr=level_lr, targets=hope_targets)
        settings.update(periods=list(periods), level_lr=level_lr, targets=hope_targets)
    else:
        learner = EWCLearner(
            model, window, lr=ewc_lr, epochs=ewc_epochs, batch_size=ewc_batch_size,
            ewc_lambda=ewc_lambda, seed=seed,
        )  # fmt: skip
        settings.update(lr=ewc_lr, epochs=ewc_epochs, batch_size=ewc_batch_size,
                        ewc_lambda=ewc_lambda)  # fmt: skip
    tasks = data.tasks[:num_tasks] if num_tasks else data.tasks
    rng = random.Random(seed)
    enc_label = {c: tokenizer.encode(" " + label_text(c) + "\n") for c in data.classes}
    res = CILResult(data.name, method, tasks, settings=settings)
    seen: list[str] = []
    task_of: dict[str, int] = {}
    eval_items: dict[str, list[list[int]]] = {}
    for t, classes in enumerate(tasks):
        demos = []
        for c in classes:
            texts = rng.sample(data.train[c], min(shots, len(data.train[c])))
            demos += [Demo(c, tokenizer.encode(PROMPT.format(text=x)), enc_label[c]) for x in texts]
            tests = rng.sample(data.test[c], min(eval_per_class, len(data.test[c])))
            eval_items[c] = [tokenizer.encode(PROMPT.format(text=x)) for x in tests]
            task_of[c] = t
        rng.shuffle(demos)
        learner.observe(demos)
        res.stream_tokens += sum(len(d.ids) for d in demos)
        seen += classes
        trie = LabelTrie({c: enc_label[c] for c in seen})
        ctx = learner.context_state()
        right = [0] * (t + 1)
        count = [0] * (t + 1)
        for c in seen:
            for prompt in eval_items[c]:
                pred = predict(learner.answer_model, ctx, prompt, trie)
                right[task_of[c]] += int(pred == c)
                count[task_of[c]] += 1
        res.acc.append(sum(right) / sum(count))
        res.acc_matrix.append([r / n for r, n in zip(right, count)])
        res.n_eval.append(sum(count))
        say(
            f"{data.name}/{method}: task {t + 1}/{len(tasks)} ({len(seen)} classes): "
            f"accuracy {100 * res.acc[-1]:.1f}% on {sum(count)} queries "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    res.wall_time_s = time.perf_counter() - t0
    return _finish(res)


def save_result(res: CILResult, path: str | Path) -> Path:
    """Write ``res`` as JSON atomically."""
    from nestlearn.data.prepare import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, asdict(res))
    return path


def load_result(path: str | Path) -> CILResult:
    """Read a JSON written by :func:`save_result`."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    return CILResult(**d)
