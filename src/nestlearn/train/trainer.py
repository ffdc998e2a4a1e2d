"""The trainer: one loop for every family, on one process or many (torchrun).

Per optimizer step: set the scheduled learning rate; draw the step's global batch (a pure
function of seed and step, see ``batches.py``); forward/backward over ``grad_accum``
micro-batches (DDP syncs only on the last); clip; step. Every step writes a JSONL line
(loss, lr, tokens/s, grad norm); validation loss and bits-per-byte at intervals;
checkpoints at intervals, at the end and on SIGINT/SIGTERM. ``resume=True`` continues from
the newest good checkpoint and reproduces the uninterrupted run's losses bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.data.mixture import MixtureValidation, parse_mixture
from nestlearn.eval.perplexity import evaluate_lm, token_byte_lengths
from nestlearn.models import LanguageModel, build_model
from nestlearn.optim import build_optimizer
from nestlearn.train.batches import IGNORE_INDEX, BatchSampler, SliceTokens, TokenSource
from nestlearn.train.checkpoint import load_latest, save_checkpoint
from nestlearn.train.config import TrainConfig, dump_config
from nestlearn.train.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    init_distributed,
    resolve_device,
    wrap_model,
)
from nestlearn.train.memory_stats import memory_stats
from nestlearn.train.schedule import lr_factor
from nestlearn.train.tracking import Trackers, check_available, parse_log_to

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    """Optimizer steps completed in total (including those before a resume)."""
    interrupted: bool
    losses: list[float] = field(default_factory=list)
    """Training loss of each step run by this call (global mean over ranks)."""
    final_eval: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    params: int = 0


def open_data(cfg: TrainConfig) -> tuple[Any, TokenSource, TokenSource]:
    """Tokenizer, training and validation token sources named by ``cfg.data``."""
    from nestlearn.data import TokenShards, default_corpus, get_tokenizer

    tok = get_tokenizer(cfg.data.tokenizer)
    entries = parse_mixture(cfg.data.train)
    if len(entries) > 1 or entries[0].weight is not None:
        from nestlearn.train.sources import open_mixture

        return open_mixture(cfg, tok, entries)
    if cfg.data.train == "corpus":
        train = default_corpus(cfg.data.tokenizer, "train")
        val = default_corpus(cfg.data.tokenizer, "validation") if cfg.data.val is None else None
    else:
        path = Path(cfg.data.train)
        if not path.is_dir():
            raise ValueError(
                f"data.train={cfg.data.train!r} is neither 'corpus' nor a folder; make one with "
                "`nestlearn prepare FILES --out DIR`"
            )
        train = TokenShards(path)
        _check_tokenizer(train, cfg.data.tokenizer, path)
        val = None
        if cfg.data.val is None:
            n = len(train)
            cut = int(n * (1 - cfg.data.val_fraction))
            train, val = SliceTokens(train, 0, cut), SliceTokens(train, cut, n)
    if val is None:
        val = TokenShards(Path(cfg.data.val))
        _check_tokenizer(val, cfg.data.tokenizer, Path(cfg.data.val))
    return tok, train, val


def _check_tokenizer(shards: Any, name: str, path: Path) -> None:
    meta = getattr(shards, "metadata", {}) or {}
    got = meta.get("tokenizer") if isinstance(meta, dict) else None
    if isinstance(got, dict):
        got = got.get("name")
    if got and got != name:
        raise ValueError(
            f"{path} was prepared with tokenizer {got!r} but data.tokenizer={name!r}; "
            f"set data.tokenizer={got} or prepare the data again"
        )


class Trainer:
    """Train a :class:`LanguageModel` described by a :class:`TrainConfig`.

    Args:
        cfg: the run configuration.
        run_dir: run folder (default ``cfg.train.out_dir`` or ``runs/<name>-<time>``).
        resume: continue from the newest good checkpoint in ``run_dir``.
        data: optional ``(tokenizer, train, val)`` to use instead of ``cfg.data``.
        on_step_end: optional callback ``(trainer, step, loss)`` after each step.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        resume: bool = False,
        data: tuple[Any, TokenSource, TokenSource] | None = None,
        on_step_end: Callable[[Trainer, int, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.on_step_end = on_step_end
        self._stop_requested = False
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(self.device)
        cfg.check(self.dist.world_size)
        self.log_targets = parse_log_to(cfg.train.log_to)
        if self.dist.is_main:
            check_available(self.log_targets)  # before any work
        self.tokenizer, self.train_data, self.val_data = (
            data if data is not None else open_data(cfg)
        )
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = int(self.tokenizer.vocab_size)
        elif cfg.model.vocab_size < int(self.tokenizer.vocab_size):
            raise ValueError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}; set model.vocab_size=0 to take the tokenizer's"
            )
        name = cfg.train.name or cfg.preset or cfg.model.family
        if run_dir is None:
            run_dir = cfg.train.out_dir or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.model: LanguageModel = build_model(cfg.model, device=self.device, seed=cfg.train.seed)
        self.params = self.model.num_params()
        self.start_step = 0
        self.tokens_seen = 0
        ckpt = self._load_model() if resume else None
        self.model.set_activation_checkpointing(cfg.train.activation_checkpointing)
        if cfg.train.compile:
            for block in self.model.blocks:
                block.compile()
        # wrap before building the optimizer: FSDP2 replaces parameters by sharded DTensors
        self.wrapped: nn.Module = wrap_model(self.model, self.dist, self.device, cfg.train.parallel)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        if ckpt is not None and ckpt.optimizer is not None:
            self._load_optimizer(ckpt.optimizer)
        self.token_bytes = token_byte_lengths(self.tokenizer, cfg.model.vocab_size)
        self.autocast = self._autocast_factory()
        self.sampler = BatchSampler(
            self.train_data,
            cfg.data.seq_len,
            cfg.data.batch_size,
            cfg.train.seed,
            cfg.data.doc_boundary,
            eos_id=getattr(self.tokenizer, "eos_id", None),
            pad_id=getattr(self.tokenizer, "pad_id", None),
        )
        self.trackers: Trackers | None = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.run_dir / "config.yaml")
            self.trackers = Trackers(
                self.log_targets,
                self.run_dir,
                name=name,
                config=cfg.to_dict(),
                start_step=self.start_step,
                wandb_project=cfg.train.wandb_project,
                wandb_mode=cfg.train.wandb_mode,
            )

    # ----------------------------------------------------------------- set-up
    def _autocast_factory(self) -> Callable[[], contextlib.AbstractContextManager]:
        dtype = self.cfg.train.dtype
        dev = self.device.type
        if dtype == "auto":
            use_bf16 = dev == "cuda" and torch.cuda.is_bf16_supported()
        else:
            use_bf16 = dtype == "bfloat16"
        if not use_bf16:
            return contextlib.nullcontext
        return lambda: torch.autocast(device_type=dev, dtype=torch.bfloat16)

    def _fsdp(self) -> bool:
        return self.cfg.train.parallel == "fsdp" and self.dist.enabled

    def _load_model(self) -> Any:
        """Load the newest good checkpoint's weights (before wrapping); return the checkpoint."""
        ckpt = load_latest(self.ckpt_dir, map_location="cpu")
        if ckpt is None:
            logger.info("no checkpoint in %s: starting from step 0", self.ckpt_dir)
            return None
        missing, unexpected = self.model.load_state_dict(ckpt.model, strict=False)
        missing = [k for k in missing if not (k == "head.weight" and self.cfg.model.tie_embeddings)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {ckpt.path} does not fit this model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}); was the config changed?"
            )
        if "torch_cpu" in ckpt.rng:
            torch.set_rng_state(ckpt.rng["torch_cpu"])
        self.start_step = ckpt.step
        self.tokens_seen = int(ckpt.trainer.get("tokens_seen", 0))
        logger.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
        if self.dist.is_main and self.metrics_path.exists():
            self._truncate_metrics(ckpt.step)
        return ckpt

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(state)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines of steps after the checkpoint (they will be run again)."""
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    # ------------------------------------------------------------ checkpoint
    def save(self, step: int) -> Path | None:
        """Checkpoint after ``step`` completed steps (rank 0 writes; all ranks take part)."""
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd = get_model_state_dict(self.model, options=opts)
            optim_sd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        else:
            model_sd = self.model.state_dict()
            optim_sd = self.optimizer.state_dict()
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.ckpt_dir,
                step,
                model_sd,
                optim_sd,
                {"tokens_seen": self.tokens_seen, "params": self.params},
                {"torch_cpu": torch.get_rng_state()},
                keep_last=self.cfg.train.keep_last,
            )
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    # ------------------------------------------------------------------ eval
    def evaluate_split(self, split: str) -> dict[str, float]:
        """Evaluate on a corpus split (``validation`` / ``test``) when training on the corpus;
        on other data the validation source stands in for both."""
        if self.cfg.data.train != "corpus" or split == "validation":
            return self.evaluate()
        from nestlearn.data import default_corpus

        return self.evaluate(default_corpus(self.cfg.data.tokenizer, split))

    def evaluate(self, source: TokenSource | None = None) -> dict[str, float]:
        """Loss, perplexity and bits-per-byte on ``source`` (default: the validation data)."""
        cfg = self.cfg
        if source is None and isinstance(self.val_data, MixtureValidation):
            return self.val_data.evaluate(self.evaluate)
        per_rank = cfg.data.batch_size // (self.dist.world_size * cfg.train.grad_accum)

        def reduce(t: torch.Tensor) -> torch.Tensor:
            if self.dist.enabled:
                t = t.to(self.device) if self.device.type == "cuda" else t
                torch.distributed.all_reduce(t)
            return t.cpu()

        return evaluate_lm(
            self.wrapped if self.cfg.train.parallel == "fsdp" else self.model,
            self.val_data if source is None else source,
            seq_len=cfg.data.seq_len,
            batch_size=max(1, per_rank),
            max_tokens=cfg.train.eval_tokens,
            token_bytes=self.token_bytes,
            device=self.device,
            autocast=self.autocast,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            reduce=reduce,
        )

    # ------------------------------------------------------------------ loop
    def request_stop(self) -> None:
        """Ask the loop to checkpoint and stop after the current step."""
        self._stop_requested = True

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def _eval_record(self, step: int, ev: dict[str, float]) -> dict[str, Any]:
        """The validation line of ``step``, with memory statistics when configured."""
        record: dict[str, Any] = {"step": step, **{f"val_{k}": v for k, v in ev.items()}}
        if self.cfg.train.memory_stats:
            record.update(self.memory_stats())
        return record

    def memory_stats(self) -> dict[str, float]:
        """``mem/...`` statistics of the memory modules on the first validation window."""
        val = self.val_data
        if isinstance(val, MixtureValidation):
            val = val.sources[0]
        T = min(self.cfg.data.seq_len, len(val))
        if T < 2:
            return {}
        ids = np.asarray(val.get(0, T), dtype=np.int64)
        x = torch.from_numpy(ids).unsqueeze(0).to(self.device)
        model = self.wrapped if self._fsdp() else self.model
        return memory_stats(model, x, self.autocast)

    def fit(self) -> TrainResult:
        cfg = self.cfg
        total = cfg.train.steps
        T, B = cfg.data.seq_len, cfg.data.batch_size
        W, A = self.dist.world_size, cfg.train.grad_accum
        per_rank = B // W
        micro = per_rank // A
        reset = self.sampler.reset
        result = TrainResult(self.run_dir, self.start_step, False, params=self.params)
        t_start = time.perf_counter()
        handlers = self._install_signal_handlers()
        bar = None
        if self.dist.is_main and cfg.train.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total,
                initial=self.start_step,
                desc=self.run_dir.name,
                unit="step",
                dynamic_ncols=True,
            )
        self.wrapped.train()
        step = self.start_step
        try:
            while step < total:
                t0 = time.perf_counter()
                factor = lr_factor(
                    step, total, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio
                )
                for g in self.optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                rows = self.sampler.rows(step)[self.dist.rank :: W]
                batches = [self.sampler.make(rows[j * micro : (j + 1) * micro]) for j in range(A)]
                if reset:  # mean over the step's real targets, whatever their split over ranks
                    n_targets = _sum_over_ranks(
                        sum(int((y != IGNORE_INDEX).sum()) for _, y in batches), self.dist
                    )
                loss_sum = torch.zeros((), device=self.device)
                for j, (x, y) in enumerate(batches):
                    x, y = x.to(self.device), y.to(self.device)
                    sync = j == A - 1 or not self.dist.enabled or cfg.train.parallel != "ddp"
                    ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
                    with ctx, self.autocast():
                        logits, _ = self.wrapped(x)
                        if reset:
                            loss = F.cross_entropy(
                                logits.float().flatten(0, 1), y.flatten(), reduction="sum"
                            ) * (W / max(n_targets, 1))
                        else:
                            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / A
                    loss.backward()
                    loss_sum += loss.detach()
                if cfg.train.grad_clip > 0:
                    gnorm = torch.nn.utils.clip_grad_norm_(
                        self.model.parameters(), cfg.train.grad_clip
                    )
                else:
                    gnorm = _grad_norm(self.model)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                loss_val = float(all_reduce_mean(loss_sum.detach(), self.dist).item())
                gnorm_val = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
                step += 1
                self.tokens_seen += B * T
                dt = time.perf_counter() - t0
                result.losses.append(loss_val)
                if not math.isfinite(loss_val):
                    raise FloatingPointError(
                        f"loss is {loss_val} at step {step}; lower optim.lr or enable train.grad_clip"
                    )
                if step % cfg.train.log_every == 0 or step == total:
                    self._log(
                        {
                            "step": step,
                            "loss": loss_val,
                            "lr": cfg.optim.lr * factor,
                            "grad_norm": gnorm_val,
                            "tokens_per_s": B * T / dt,
                            "tokens": self.tokens_seen,
                            "time_s": time.perf_counter() - t_start,
                            **({"target_fraction": n_targets / (B * T)} if reset else {}),
                        }
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{B * T / dt:,.0f}")
                if self.on_step_end is not None:
                    self.on_step_end(self, step, loss_val)
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                    ev = self.evaluate()
                    self._log(self._eval_record(step, ev))
                    if bar is not None:
                        bar.write(f"step {step}: val loss {ev['loss']:.4f}, bpb {ev['bpb']:.4f}")
                stop = any_rank(self._stop_requested, self.dist)
                if stop and step < total:
                    self.save(step)
                    result.interrupted = True
                    logger.warning(
                        "stopped at step %d; checkpoint written, resume with --resume", step
                    )
                    break
                if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and step < total:
                    self.save(step)
            else:
                self.save(step)
                ev = self.evaluate()
                self._log(self._eval_record(step, ev))
                result.final_eval = ev
        finally:
            if bar is not None:
                bar.close()
            if self.trackers is not None:
                self.trackers.close()
            self._restore_signal_handlers(handlers)
        result.steps = step
        result.wall_time_s = time.perf_counter() - t_start
        return result

    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum: int, frame: Any) -> None:
            logger.warning("received signal %d: saving a checkpoint after this step", signum)
            self._stop_requested = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def _sum_over_ranks(n: int, info: DistInfo) -> int:
    """``n`` summed over all ranks (itself without torchrun)."""
    if not info.enabled:
        return n
    t = torch.tensor([float(n)], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return int(t.item())


def _grad_norm(model: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())
