"""What the command modules share: the usage error, rank-0 printing, the state flags.

Every command module of :mod:`nestlearn.cli` imports from here; nothing else does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
