"""``nestlearn generate``: sample text from a checkpoint (one stream with --state-in/out)."""

from __future__ import annotations

import argparse

from nestlearn.cli._common import (
    UsageError,
    add_checkpoint_arg,
    add_freeze_memory_arg,
    add_stream_args,
    check_sampling_args,
    check_state_out,
    freeze,
    load_state_arg,
    save_state_arg,
)

COMMAND = "generate"
HELP = "sample text from a checkpoint"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    add_freeze_memory_arg(p)
    add_stream_args(p, None)


def run(args: argparse.Namespace) -> int:
    import torch

    from nestlearn.eval.samples import sample_text
    from nestlearn.train.run import load_run

    check_sampling_args(args)
    run = load_run(args.checkpoint)
    freeze(run.model, run.cfg.model.family, args.freeze_memory)
    check_state_out(args, run.model)
    if args.state_in or args.state_out:
        print(_stream_text(run, args, torch))
        return 0
    print(
        sample_text(
            run.model,
            run.tokenizer,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.num_samples,
        )
    )
    return 0


def _stream_text(run, args: argparse.Namespace, torch) -> str:  # noqa: ANN001
    """generate with --state-in/--state-out: one stream that continues across calls.

    Without --state-in the prompt starts a document (eos first, as without state flags); with
    it the prompt continues the saved stream directly. The saved state has consumed the prompt
    and every generated token (docs/streaming.md).
    """
    from nestlearn.models.generation import generate

    if args.num_samples != 1:
        raise UsageError("--state-in/--state-out keep one stream; use --num-samples 1")
    tok, model = run.tokenizer, run.model
    state = load_state_arg(args, run)
    ids = tok.encode(args.prompt) if args.prompt else []
    if (state is None or not ids) and tok.eos_id is not None:
        ids = [tok.eos_id] + ids
    if not ids:
        raise UsageError("give a --prompt: this tokenizer has no end-of-document token to start")
    idx = torch.tensor([ids], dtype=torch.long)
    out, state = generate(
        model,
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_id=tok.eos_id,
        state=state,
    )
    with torch.no_grad():  # the last sampled token is not in the state yet
        _, state = model(out[:, -1:], state=state)
    save_state_arg(args, run, state)
    new = [t for t in out[0, len(ids) :].tolist() if t != tok.eos_id]
    return args.prompt + tok.decode(new)
