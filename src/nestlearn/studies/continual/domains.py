"""Domain-stream forgetting: tiny models trained from scratch on one text domain after another.

Protocol (docs/continual.md, "Domain-stream forgetting"):

* **Data.** Each domain is one source of the embedded corpus (``austen``, ``shakespeare``,
  ``sotu``). Its ``train`` documents, byte-tokenized and each followed by ``eos`` (as
  ``nestlearn prepare`` writes them), are the stream a phase trains on; its ``test`` documents
  are its held-out text. ``moby_dick`` has no test split and is not a domain.
* **Training.** Every model starts from the same seed and sees the same batches: the window
  starts of global step ``g`` are ``batch_starts(len(domain), seq_len, batch_size, seed, g)``
  (``nestlearn.train.batches``). AdamW with the trainer's defaults (betas 0.9/0.95, weight decay
  0.1 on matrices, gradient clip 1.0), a linear warm-up over the first
  ``min(10, max(1, total_steps // 10))`` steps, then a constant learning rate. The optimizer is
  built once and never reset: phase ``k + 1`` continues from phase ``k``'s weights and moments
  (online continual training). The rate is constant, not cosine, so every phase trains at the same
  rate and later domains are not learned more gently than earlier ones.
* **Evaluation.** Before training and after each phase, every domain's held-out text is scored
  with :func:`~nestlearn.train.validation.evaluate_lm`: ``eval_tokens // seq_len`` windows of
  ``seq_len`` targets at evenly spaced starts over the domain's test stream (not only its first
  document), each window from a fresh model state. Hope's and Titans' test-time memories learn
  inside each window as in their normal forward. Matrices ``P[row][domain]`` have row 0 = before
  training and row ``k`` = after phase ``k``.
* **Summary.** Final average = mean over domains of the last row. Forgetting = mean over every
  domain but the last of (final value - value right after that domain's own phase); positive
  means the domain was forgotten. Both in perplexity and in bits per byte.

Axis legend: ``B`` batch rows, ``T`` = ``seq_len`` tokens per window.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F

from nestlearn.data.corpus import corpus_documents, split_documents
from nestlearn.data.tokenizers import get_tokenizer
from nestlearn.models import PRESETS, ModelConfig, build_model, preset_config
from nestlearn.optim import build_optimizer
from nestlearn.optim.config import OptimConfig
from nestlearn.studies.continual.domains_report import plot_domains, row_labels, write_markdown
from nestlearn.train.batches import ArrayTokens, batch_starts, make_batch
from nestlearn.train.loop import fit_steps, prepare_optimizer
from nestlearn.train.validation import evaluate_lm, token_byte_lengths

logger = logging.getLogger(__name__)

TOKENIZER = "byte"
"""The project's default tokenizer (``DataConfig.tokenizer``); bits per byte make it comparable."""
WARMUP_STEPS = 10
"""Linear warm-up length in optimizer steps (shortened to a tenth of a short run)."""
GRAD_CLIP = 1.0
"""Global gradient-norm clip, as the trainer's default."""


# ----------------------------------------------------------------------------- data
def available_domains() -> tuple[str, ...]:
    """Corpus sources with both train and test documents, in manifest order."""
    by_split: dict[str, set[str]] = {}
    for d in split_documents("all"):
        by_split.setdefault(d["source"], set()).add(d["split"])
    return tuple(s for s, splits in by_split.items() if {"train", "test"} <= splits)


@functools.lru_cache(maxsize=1)
def _all_domain_tokens() -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    """``(source, split) -> (ids [N] uint16, documents)`` for the whole corpus (one archive read)."""
    tok = get_tokenizer(TOKENIZER)
    entries = {d["path"]: d for d in split_documents("all")}
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    eos = np.array([tok.eos_id], dtype=np.uint16)
    for path, text in corpus_documents("all"):
        e = entries[path]
        ids = tok.encode_arrays([text], dtype=np.uint16)[0]
        parts.setdefault((e["source"], e["split"]), []).extend([ids, eos])
    return {k: (np.concatenate(v), len(v) // 2) for k, v in parts.items()}


def domain_tokens(domain: str, split: str) -> np.ndarray:
    """Byte-tokenized ``split`` documents of corpus source ``domain``, each followed by eos: ``[N]``.

    The arrays are cached for the process (the whole corpus is about 42 MB as uint16).
    """
    key = (domain, split)
    table = _all_domain_tokens()
    if key not in table:
        raise ValueError(f"the corpus has no {split!r} documents of source {domain!r}")
    return table[key][0]


class _SpreadWindows:
    """``n`` windows of ``T + 1`` ids at evenly spaced starts of ``tokens``, served as if tiled.

    :func:`evaluate_lm` reads window ``w`` as ``get(w * T, T + 1)``; this source answers that
    with the ``w``-th spread window, so the score covers the whole held-out stream, not its head.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, n_windows: int) -> None:
        span = len(tokens) - seq_len - 1
        if span < 0:
            raise ValueError(f"a held-out stream of {len(tokens)} tokens is shorter than seq_len+1")
        n = max(1, min(n_windows, (len(tokens) - 1) // seq_len))
        starts = np.linspace(0, span, n).round().astype(np.int64)
        self.seq_len = seq_len
        self.rows = [np.asarray(tokens[s : s + seq_len + 1]) for s in starts]
        self.starts = starts

    def __len__(self) -> int:
        return len(self.rows) * self.seq_len + 1

    def get(self, start: int, length: int) -> np.ndarray:
        w, r = divmod(int(start), self.seq_len)
        if r or length != self.seq_len + 1:
            raise ValueError("_SpreadWindows serves whole windows only (as evaluate_lm reads them)")
        return self.rows[w]


# ----------------------------------------------------------------------------- checks
def _check_args(
    models: Sequence[str],
    domains: Sequence[str],
    steps_per_phase: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    eval_tokens: int,
    threads: int,
) -> None:
    valid = available_domains()
    if isinstance(models, str) or isinstance(domains, str):
        raise ValueError("models and domains are sequences of names, e.g. ('hope-tiny',)")
    if not domains:
        raise ValueError(f"domains is empty; choose from: {', '.join(valid)}")
    for d in domains:
        if d not in valid:
            hint = " (it has no test split)" if d == "moby_dick" else ""
            raise ValueError(f"unknown domain {d!r}{hint}; choose from: {', '.join(valid)}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"domains {list(domains)} repeat a name; give each domain once")
    if not models:
        raise ValueError("models is empty; name presets, e.g. hope-tiny, titans-tiny")
    for m in models:
        if m not in PRESETS:
            raise ValueError(
                f"unknown model {m!r}; choose a preset from: {', '.join(sorted(PRESETS))}"
            )
    if len(set(models)) != len(models):
        raise ValueError(f"models {list(models)} repeat a name; give each model once")
    for key, value in (("steps_per_phase", steps_per_phase), ("batch_size", batch_size),
                       ("threads", threads)):  # fmt: skip
        if int(value) < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if eval_tokens < seq_len:
        raise ValueError(
            f"eval_tokens={eval_tokens} is less than one window of seq_len={seq_len}; "
            f"use eval_tokens >= {seq_len}"
        )


# ----------------------------------------------------------------------------- one model
def warmup_steps(total_steps: int) -> int:
    """Warm-up length: :data:`WARMUP_STEPS`, or a tenth of a run shorter than 100 steps."""
    return min(WARMUP_STEPS, max(1, total_steps // 10))


def _evaluate_all(
    model: torch.nn.Module,
    held_out: Mapping[str, _SpreadWindows],
    *,
    seq_len: int,
    batch_size: int,
    token_bytes: torch.Tensor,
) -> dict[str, dict[str, float]]:
    return {
        d: evaluate_lm(
            model,
            src,
            seq_len=seq_len,
            batch_size=batch_size,
            max_tokens=len(src) - 1,
            token_bytes=token_bytes,
        )
        for d, src in held_out.items()
    }


def _train_model(
    name: str,
    cfg: ModelConfig,
    train: Mapping[str, ArrayTokens],
    held_out: Mapping[str, _SpreadWindows],
    *,
    steps_per_phase: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    token_bytes: torch.Tensor,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Train one model phase by phase over ``train`` (in order); score ``held_out`` after each."""
    domains = list(train)
    t_model = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(cfg, seed=seed)
    opt = prepare_optimizer(model, build_optimizer(model, OptimConfig(name="adamw", lr=lr)))
    total = steps_per_phase * len(domains)
    warm = warmup_steps(total)
    ev_kw = {"seq_len": seq_len, "batch_size": batch_size, "token_bytes": token_bytes}

    t0 = time.perf_counter()
    rows = [_evaluate_all(model, held_out, **ev_kw)]
    eval_s = time.perf_counter() - t0
    say(f"{name}: before training, held-out bpb " + _bpb_line(rows[0]) + f" ({eval_s:.0f} s)")
    phases: list[dict[str, Any]] = []
    losses: list[float] = []
    step = 0
    for k, domain in enumerate(domains, start=1):
        src = train[domain]
        t0 = time.perf_counter()
        batches = (
            make_batch(src, batch_starts(len(src), seq_len, batch_size, seed, s), seq_len)
            for s in range(step, step + steps_per_phase)
        )
        phase_losses, _ = fit_steps(
            model, opt, batches, functools.partial(lm_loss, model=model), start=step,
            steps=steps_per_phase, lr_factor=lambda s: min(1.0, (s + 1) / warm), grad_clip=GRAD_CLIP,
            on_diverged=_diverged(name, domain),
        )  # fmt: skip
        step += steps_per_phase
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows.append(_evaluate_all(model, held_out, **ev_kw))
        ev_s = time.perf_counter() - t0
        eval_s += ev_s
        tok_s = steps_per_phase * batch_size * seq_len / max(train_s, 1e-9)
        losses.extend(phase_losses)
        phases.append({
            "domain": domain, "steps": steps_per_phase, "train_loss_first": phase_losses[0],
            "train_loss_last": phase_losses[-1], "train_s": train_s, "eval_s": ev_s,
            "tokens_per_s": tok_s,
        })  # fmt: skip
        say(
            f"{name}: phase {k}/{len(domains)} ({domain}) {steps_per_phase} steps, train loss "
            f"{phase_losses[0]:.3f} -> {phase_losses[-1]:.3f}, {tok_s:,.0f} tok/s; held-out bpb "
            f"{_bpb_line(rows[-1])} ({train_s + ev_s:.0f} s)"
        )
    columns = list(held_out)
    matrices = {key: [[r[d][key] for d in columns] for r in rows] for key in ("ppl", "bpb", "loss")}
    total_s = time.perf_counter() - t_model
    return {
        "config": cfg.to_dict(),
        "params": model.num_params(),
        **matrices,
        "phases": phases,
        "train_loss": losses,
        "summary": summarize(matrices, columns, domains),
        "wall_time_s": {
            "train": sum(p["train_s"] for p in phases),
            "eval": eval_s,
            "total": total_s,
        },
    }


def lm_loss(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    logits, _ = model(x)  # logits [B, T, V]
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def _diverged(name: str, domain: str) -> Callable[[int, float, float], NoReturn]:
    def raise_(step: int, loss: float, gnorm: float) -> NoReturn:
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {gnorm}"
        raise FloatingPointError(f"{name}: {what} at step {step + 1} ({domain}); lower lr")

    return raise_


def _bpb_line(row: Mapping[str, Mapping[str, float]]) -> str:
    return ", ".join(f"{d} {v['bpb']:.3f}" for d, v in row.items())


def summarize(
    matrices: Mapping[str, list[list[float]]], columns: Sequence[str], phases: Sequence[str]
) -> dict[str, Any]:
    """Final averages and forgetting from ``P[row][column]`` (row 0 = before training).

    Forgetting of domain ``d`` trained in phase ``k`` = ``P[last][d] - P[k][d]``; the mean is
    over every phase domain but the last (``None`` with a single phase).
    """
    out: dict[str, Any] = {}
    col = {d: i for i, d in enumerate(columns)}
    for key in ("ppl", "bpb"):
        P = matrices[key]
        out[f"final_{key}_mean"] = float(np.mean(P[-1]))
        per = {d: P[-1][col[d]] - P[k][col[d]] for k, d in enumerate(phases[:-1], start=1)}
        out[f"forgetting_{key}_by_domain"] = per
        out[f"forgetting_{key}"] = float(np.mean(list(per.values()))) if per else None
    return out


def _write(result: dict[str, Any], out: Path) -> None:
    (out / "domains.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, out / "domains.md")
    plot_domains(result, out / "domains.png")


# ----------------------------------------------------------------------------- driver
def run_domains(
    out: str | Path,
    *,
    models: Sequence[str] = ("hope-tiny", "titans-tiny", "transformer-tiny"),
    domains: Sequence[str] = ("austen", "shakespeare", "sotu"),
    steps_per_phase: int = 60,
    batch_size: int = 8,
    seq_len: int = 256,
    lr: float = 3e-3,
    eval_tokens: int = 16384,
    seed: int = 0,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train each model from scratch on ``domains`` in turn; score every domain after each phase.

    Args:
        out: folder for ``domains.json`` (everything), ``domains.md`` (tables) and
            ``domains.png`` (bits/byte per held-out domain against phase); rewritten after each
            model so a stopped run keeps the finished models.
        models: preset names (``nestlearn list``); each is trained from the same seed on the
            same batches.
        domains: corpus sources in training order (:func:`available_domains`).
        steps_per_phase: optimizer steps on each domain.
        batch_size, seq_len: a step trains on ``[batch_size, seq_len]`` tokens.
        lr: AdamW peak learning rate (linear warm-up, then constant).
        eval_tokens: held-out targets scored per domain at each evaluation
            (``eval_tokens // seq_len`` windows).
        seed: model initialisation and batch sampling.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).
        progress: called with one line per model and phase.
        model_overrides: ``ModelConfig`` fields applied to every preset (e.g. ``dim``,
            ``n_layers`` for small tests).

    Returns:
        The dict written to ``domains.json``: ``config``, ``rows`` (row labels), ``data``
        (tokens per domain), ``models[name]`` with ``ppl`` / ``bpb`` / ``loss`` matrices
        ``[len(domains) + 1][len(domains)]`` (row 0 = before training), ``phases``,
        ``train_loss``, ``summary`` and ``wall_time_s``; and the total ``wall_time_s``.

    Raises:
        ValueError: an unknown model or domain, or a non-positive size.

    Cost of the defaults: a phase is 60 x 8 x 256 = 122,880 tokens, 368,640 per model over three
    domains; at 2 idle threads hope-tiny trains at ~1,400 tokens/s (263 s), titans-tiny ~3,800
    (97 s), transformer-tiny ~6,500 (57 s): about 7 min of training. Each model is evaluated 4
    times x 3 domains x 16,384 tokens = 196,608 forward-only tokens, about a third of the
    training tokens at roughly three times the speed: about 75 s for the three models. Total
    about 8-9 minutes on 2 idle cores. Measured at ``threads=1`` beside a busy core: 758 s.
    """
    _check_args(models, domains, steps_per_phase, batch_size, seq_len, lr, eval_tokens, threads)

    def say(line: str) -> None:
        logger.info(line)
        if progress is not None:
            progress(line)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    try:
        tok = get_tokenizer(TOKENIZER)
        overrides = {"vocab_size": tok.vocab_size, **dict(model_overrides or {})}
        cfgs = {}
        for m in models:
            cfg = preset_config(m, **overrides)
            cfg.max_seq_len = max(cfg.max_seq_len, seq_len)
            cfgs[m] = cfg
        token_bytes = token_byte_lengths(tok, tok.vocab_size)
        train = {d: ArrayTokens(domain_tokens(d, "train")) for d in domains}
        n_windows = eval_tokens // seq_len
        held_out = {
            d: _SpreadWindows(domain_tokens(d, "test"), seq_len, n_windows) for d in domains
        }
        result: dict[str, Any] = {
            "config": {
                "models": list(models), "domains": list(domains),
                "steps_per_phase": steps_per_phase, "batch_size": batch_size, "seq_len": seq_len,
                "lr": lr, "schedule": "linear warm-up, then constant",
                "warmup_steps": warmup_steps(steps_per_phase * len(domains)),
                "optimizer": "adamw", "betas": list(OptimConfig().betas),
                "weight_decay": OptimConfig().weight_decay, "grad_clip": GRAD_CLIP,
                "eval_tokens": eval_tokens,
                "eval_windows": min(len(h.rows) for h in held_out.values()),
                "seed": seed, "threads": threads, "tokenizer": TOKENIZER,
                "model_overrides": dict(model_overrides or {}),
            },
            "rows": row_labels(domains),
            "data": {
                d: {"train_tokens": len(train[d]), "test_tokens": len(domain_tokens(d, "test")),
                    "eval_targets": len(held_out[d].rows) * seq_len}
                for d in domains
            },
            "models": {},
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
            "wall_time_s": 0.0,
        }  # fmt: skip
        for m in models:
            logger.info("domains: training %s (%s)", m, cfgs[m].family)
            result["models"][m] = _train_model(
                m, cfgs[m], train, held_out, steps_per_phase=steps_per_phase,
                batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed,
                token_bytes=token_bytes, say=say,
            )  # fmt: skip
            result["wall_time_s"] = time.perf_counter() - t_start
            _write(result, out)
    finally:
        torch.set_num_threads(old_threads)
    return result
