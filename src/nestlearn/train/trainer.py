"""The trainer: one loop for every family, on one process or many (torchrun).

Per optimizer step: set the scheduled learning rate; draw the step's global batch (a pure
function of seed and step, see ``batches.py``); forward/backward over ``grad_accum``
micro-batches (DDP syncs only on the last); clip; step. Every step writes a JSONL line
(loss, lr, tokens/s, grad norm); validation loss and bits-per-byte at intervals;
checkpoints at intervals, at the end and on SIGINT/SIGTERM. ``resume=True`` continues from
the newest good checkpoint and reproduces the uninterrupted run's losses bit for bit on CPU.

Guards: a folder that holds another run is refused unless resumed or replaced (``force``); a
non-finite loss or gradient norm stops the run before the bad update, keeping a checkpoint of
the last good step; a gradient norm of exactly 0 for ``train.dead_grad_steps`` steps in a row
stops a dead run. Both raise :class:`TrainingStopped`.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from nestlearn.data.mixture import MixtureValidation
from nestlearn.models import LanguageModel, build_model
from nestlearn.models.compiling import compile_model
from nestlearn.optim import build_optimizer
from nestlearn.train.batches import IGNORE_INDEX, BatchSampler, TokenSource
from nestlearn.train.checkpoint import (
    Checkpoint,
    recover,
)
from nestlearn.train.config import TrainConfig, dump_config
from nestlearn.train.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    init_distributed,
    resolve_device,
    wrap_model,
)
from nestlearn.train.guards import stop_dead, stop_diverged
from nestlearn.train.heap import set_mmap_threshold
from nestlearn.train.loop import finish_step, prepare_optimizer, set_lr_factor
from nestlearn.train.memory_stats import memory_stats
from nestlearn.train.resume import load_model_state, load_optimizer_state, save_trainer
from nestlearn.train.rundir import (
    claim_run_dir,
    tidy_run_dir,
)
from nestlearn.train.schedule import lr_factor
from nestlearn.train.sources import open_data
from nestlearn.train.tracking import Trackers, check_available, parse_log_to
from nestlearn.train.validation import evaluate_lm, token_byte_lengths

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
    already_finished: bool = False
    """The run had reached ``train.steps`` before this call: nothing was trained or written."""


class Trainer:
    """Train a :class:`LanguageModel` described by a :class:`TrainConfig`.

    Args:
        cfg: the run configuration.
        run_dir: run folder (default ``cfg.train.out_dir`` or ``runs/<name>-<time>``).
        resume: continue from the newest good checkpoint in ``run_dir``.
        force: replace a run already in ``run_dir`` (its config, metrics and checkpoints);
            without ``resume`` or ``force`` such a folder is refused.
        checkpoint: with ``resume``, the checkpoint to continue from, already loaded (the
            CLI loads it to read its config); default: the newest good one in ``run_dir``.
        data: optional ``(tokenizer, train, val)`` to use instead of ``cfg.data``.
        on_step_end: optional callback ``(trainer, step, loss)`` after each step.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        resume: bool = False,
        force: bool = False,
        checkpoint: Checkpoint | None = None,
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
        if self.device.type == "cpu":
            set_mmap_threshold(cfg.train.mmap_threshold_kb * 1024)
        self.dist: DistInfo = init_distributed(self.device)
        cfg.check(self.dist.world_size)
        # The model's init has its own generators (build_model's seed); this seeds torch's
        # global ones (CPU and every GPU) for anything else that draws. A resume restores them.
        torch.manual_seed(cfg.train.seed)
        self.log_targets = parse_log_to(cfg.train.log_to)
        if self.dist.is_main:
            check_available(self.log_targets)  # before any work
        self.tokenizer, self.train_data, self.val_data = (
            data if data is not None else open_data(cfg)
        )
        val_parts: list[tuple[str, TokenSource]] = [("", self.val_data)]
        if isinstance(self.val_data, MixtureValidation):
            val = self.val_data
            val_parts = [(f" of mixture source {n!r}", v) for n, v in zip(val.names, val.sources)]
        for where, val in val_parts:  # each mixture source is scored on its own held-out tail
            if len(val) < cfg.data.seq_len + 1:
                raise ValueError(
                    f"the validation data{where} holds {len(val)} tokens, fewer than "
                    f"data.seq_len+1={cfg.data.seq_len + 1} (one window); use more data, a "
                    "larger data.val_fraction or a shorter data.seq_len"
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
        claim_run_dir(self.run_dir, resume=resume, force=force, write=self.dist.is_main)
        if self.dist.is_main:
            tidy_run_dir(self.run_dir)
            if resume:
                recover(self.ckpt_dir)
        if self.dist.enabled:
            torch.distributed.barrier()
        self.model: LanguageModel = build_model(cfg.model, device=self.device, seed=cfg.train.seed)
        self.params = self.model.num_params()
        self.start_step = 0
        self.tokens_seen = 0
        ckpt = load_model_state(self, checkpoint) if resume else None
        self.finished = self.start_step >= cfg.train.steps
        self.model.set_activation_checkpointing(cfg.train.activation_checkpointing)
        if cfg.train.compile:
            for line in compile_model(self.model, cfg.train.compile_mode):
                logger.info("compile: %s", line)
        # wrap before building the optimizer: FSDP2 replaces parameters by sharded DTensors
        self.wrapped: nn.Module = wrap_model(self.model, self.dist, self.device, cfg.train.parallel)
        self.optimizer = prepare_optimizer(self.model, build_optimizer(self.model, cfg.optim))
        if ckpt is not None and ckpt.optimizer is not None:
            load_optimizer_state(self, ckpt.optimizer, ckpt.path)
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
            vocab_size=cfg.model.vocab_size,
        )
        self.trackers: Trackers | None = None
        if self.dist.is_main and not self.finished:  # a finished run's --resume writes nothing
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

    # ------------------------------------------------------------ checkpoint
    def save(self, step: int) -> Path | None:
        """Checkpoint after ``step`` completed steps (rank 0 writes; all ranks take part)."""
        return save_trainer(self, step)

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
        if self.start_step >= total:
            logger.info("%s is already finished (step %d of %d): nothing to do", self.run_dir,
                        self.start_step, total)  # fmt: skip
            result.already_finished = True
            return result
        t_start = time.perf_counter()
        zero_grad_since: int | None = None  # first step of the current run of zero gradients
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
                set_lr_factor(self.optimizer, factor)
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
                loss_val = float(all_reduce_mean(loss_sum.detach(), self.dist).item())
                gnorm_val = finish_step(
                    self.optimizer,
                    self.model.parameters(),
                    step=step,
                    loss=loss_val,
                    grad_clip=cfg.train.grad_clip,  # the bad update is never applied
                    on_diverged=lambda s, lo, gn, dead=zero_grad_since: stop_diverged(
                        self, s, lo, gn, dead
                    ),
                )
                step += 1
                self.tokens_seen += B * T
                dt = time.perf_counter() - t0
                result.losses.append(loss_val)
                if gnorm_val == 0.0:
                    zero_grad_since = step if zero_grad_since is None else zero_grad_since
                else:
                    zero_grad_since = None
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
                dead = cfg.train.dead_grad_steps and zero_grad_since is not None
                if dead and step - zero_grad_since + 1 >= cfg.train.dead_grad_steps:
                    stop_dead(self, zero_grad_since, step)  # after this step's metrics line
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
                if (
                    cfg.train.ckpt_every
                    and step % cfg.train.ckpt_every == 0
                    and step < total
                    and zero_grad_since is None  # keep the checkpoints from before it died
                ):
                    self.save(step)
            else:
                # the final evaluation is logged before the final checkpoint: a run killed in
                # between resumes from the previous checkpoint and logs it again (trimmed), so
                # a run whose final checkpoint exists always has its final evaluation
                try:
                    ev = self.evaluate()
                    record = self._eval_record(step, ev)
                except BaseException:
                    self.save(step)
                    raise
                self._log(record)
                self.save(step)
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
