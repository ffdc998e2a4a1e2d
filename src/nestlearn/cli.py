"""The ``nestlearn`` command. Thin: parse, build configs, call ``train`` / ``eval``.

nestlearn demo                       the main job (train, evaluate, plot, sample)
nestlearn train --preset NAME [k=v]  train from a preset or --config FILE.yaml
nestlearn eval --checkpoint RUN      perplexity and bits-per-byte
nestlearn generate --checkpoint RUN  sample text
nestlearn prepare FILES --out DIR    tokenize text into memmap shards
nestlearn list                       families and presets
nestlearn bench --model NAME ...     throughput, memory and MFU
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command line or input file: printed as `error: ...`, exit code 2."""


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print(*args: object) -> None:
    if _is_main():
        print(*args, flush=True)


# ------------------------------------------------------------------------ train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train from a preset or a YAML recipe, with dotted overrides (e.g. optim.lr=3e-4 train.steps=500).",
    )
    p.add_argument("--preset", help="model preset (see `nestlearn list`)")
    p.add_argument(
        "--config", help="YAML run recipe (sections model, optim, data, schedule, train)"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest good checkpoint",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<name>-<time>)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a run already in --out (its config, metrics and checkpoints)",
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.rundir import resume_config

    ckpt = None
    if args.resume:
        if args.preset or args.config:
            raise UsageError(
                "--resume takes the run's saved config; drop --preset/--config (overrides are allowed)"
            )
        if args.force:
            raise UsageError("--resume continues a run and --force replaces it; give one of them")
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UsageError(f"--out {args.out} and --resume {args.resume} name different folders")
        cfg, ckpt = resume_config(run_dir, args.overrides)
    else:
        if not args.preset and not args.config:
            raise UsageError(
                "give --preset NAME or --config FILE.yaml (`nestlearn list` shows presets)"
            )
        cfg = resolve_config(args.preset, args.config, args.overrides)
        run_dir = Path(args.out) if args.out else None
    from nestlearn.train.distributed import cleanup_distributed

    try:
        trainer = Trainer(
            cfg, run_dir=run_dir, resume=bool(args.resume), force=args.force, checkpoint=ckpt
        )
        if trainer.finished:
            _print(
                f"{trainer.run_dir} is already finished (step {trainer.start_step} of "
                f"train.steps={cfg.train.steps}); nothing to do. To train further, raise "
                f"train.steps, e.g. nestlearn train --resume {trainer.run_dir} "
                f"train.steps={2 * max(cfg.train.steps, trainer.start_step)}"
            )
            return 0
        _print(
            f"run folder: {trainer.run_dir}  ({trainer.params:,} parameters, "
            f"{trainer.dist.world_size} process(es), device {trainer.device})"
        )
        result = trainer.fit()
    finally:
        cleanup_distributed()
    if result.interrupted:
        _print(
            f"interrupted at step {result.steps}; resume with: nestlearn train --resume {trainer.run_dir}"
        )
        return EXIT_INTERRUPTED
    ev = result.final_eval
    _print(
        f"done: {result.steps} steps in {result.wall_time_s:.0f}s; validation loss {ev['loss']:.4f}, "
        f"perplexity {ev['ppl']:.2f}, bits/byte {ev['bpb']:.4f}"
    )
    return 0


# ------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and bits-per-byte of a checkpoint")
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint folder"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--split",
        default="validation",
        choices=["train", "validation", "test"],
        help="corpus split (default validation)",
    )
    src.add_argument("--text", metavar="FILE", help="evaluate on a UTF-8 text file instead")
    src.add_argument(
        "--data", metavar="DIR", help="evaluate on a folder made by `nestlearn prepare`"
    )
    p.add_argument("--tokens", type=int, default=262144, help="tokens to score (default 262144)")
    p.add_argument(
        "--seq-len", type=int, default=None, help="window length (default: the run's data.seq_len)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--tasks",
        metavar="T1,T2",
        help="zero-shot tasks instead of perplexity (piqa, arc_easy, ...; see docs/evaluation.md)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the task data sets")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument(
        "--freeze-memory",
        action="store_true",
        help="turn off test-time memory updates (families that learn in context)",
    )
    _add_stream_args(p, "evaluate one stream (batch 1) with the memory state threaded through")
    p.set_defaults(func=cmd_eval)


def _add_stream_args(p: argparse.ArgumentParser, stream_help: str | None) -> None:
    """--stream / --state-in / --state-out (docs/streaming.md)."""
    if stream_help:
        p.add_argument("--stream", action="store_true", help=stream_help)
    p.add_argument(
        "--state-in", metavar="FILE", help="start from the per-sequence state saved in FILE"
    )
    p.add_argument("--state-out", metavar="FILE", help="save the final per-sequence state to FILE")


def _freeze(model, family: str, freeze: bool) -> None:  # noqa: ANN001
    from nestlearn.models import set_memory_frozen

    if freeze and not set_memory_frozen(model, True):
        print(f"note: --freeze-memory: {family} has no in-context memory", file=sys.stderr)


def _load_state_arg(args: argparse.Namespace, run) -> object:  # noqa: ANN001
    """The --state-in state (batch 1) or None; refusals exit 2 naming both models."""
    from nestlearn.models import FAMILIES, load_state

    if not FAMILIES[run.cfg.model.family].supports_decode:
        raise UsageError(f"{run.cfg.model.family} keeps no per-sequence state between calls")
    if not args.state_in:
        return None
    return load_state(args.state_in, run.model, batch_size=1, name=str(run.checkpoint))


def _check_state_out(args: argparse.Namespace, model) -> None:  # noqa: ANN001
    """Refuse --state-out before any work when the state could not be saved at the end."""
    from nestlearn.models import uses_ntp

    if args.state_out and uses_ntp(model):
        raise UsageError(
            "--state-out cannot save the state of a model with cms.objective=ntp: its last "
            "token's next-token gradient waits for the token that follows (docs/cms.md); add "
            "--freeze-memory, or train with model.mixer.cms.objective=next"
        )


def _save_state_arg(args: argparse.Namespace, run, state) -> None:  # noqa: ANN001
    from nestlearn.models import save_state

    if args.state_out:
        save_state(state, args.state_out, run.model, batch_size=1, source=str(run.checkpoint))
        print(f"state: {state.position} tokens, saved to {args.state_out}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from nestlearn.eval.perplexity import evaluate_lm, token_byte_lengths
    from nestlearn.train.batches import ArrayTokens
    from nestlearn.train.run import load_run

    stream = args.stream or bool(args.state_in or args.state_out)
    if args.tokens <= 0:
        raise UsageError(f"--tokens must be positive, got {args.tokens}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.seq_len is not None and args.seq_len < 1:
        raise UsageError(f"--seq-len must be positive, got {args.seq_len}")
    if args.tasks:
        if stream:
            raise UsageError("--stream/--state-in/--state-out apply to perplexity, not --tasks")
        try:
            from nestlearn.eval.tasks import run_tasks
        except ImportError as e:
            raise UsageError(f"task evaluation is not available in this install ({e})") from e
        return run_tasks(args)
    run = load_run(args.checkpoint)
    tok = run.tokenizer
    if args.text:
        path = Path(args.text)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{path} is not UTF-8 text") from None
        if not text.strip():
            raise UsageError(f"{path} is empty")
        source, what = ArrayTokens(np.asarray(tok.encode(text))), str(path)
    elif args.data:
        from nestlearn.data import TokenShards

        source, what = TokenShards(Path(args.data)), args.data
    else:
        from nestlearn.data import default_corpus

        source, what = default_corpus(run.cfg.data.tokenizer, args.split), f"corpus/{args.split}"
    seq = args.seq_len or run.cfg.data.seq_len
    _freeze(run.model, run.cfg.model.family, args.freeze_memory)
    _check_state_out(args, run.model)
    if stream:
        from nestlearn.eval.stream import evaluate_stream

        ev, state = evaluate_stream(
            run.model,
            source,
            seq_len=seq,
            max_tokens=args.tokens,
            token_bytes=token_byte_lengths(tok, run.cfg.model.vocab_size),
            state=_load_state_arg(args, run),
        )
        _save_state_arg(args, run, state)
    else:
        ev = evaluate_lm(
            run.model,
            source,
            seq_len=seq,
            batch_size=args.batch_size,
            max_tokens=args.tokens,
            token_bytes=token_byte_lengths(tok, run.cfg.model.vocab_size),
        )
    if args.json:
        head = {"checkpoint": str(run.checkpoint), "data": what, "seq_len": seq}
        print(json.dumps({**head, "mode": "stream" if stream else "windows", **ev}))
    else:
        from nestlearn.train.report import format_table

        print(
            format_table(
                ["checkpoint", "data", "tokens", "loss", "perplexity", "bits/byte"],
                [
                    [
                        f"{run.checkpoint.parent.parent.name}@{run.step}",
                        what,
                        ev["tokens"],
                        ev["loss"],
                        ev["ppl"],
                        ev["bpb"],
                    ]
                ],
            )
        )
    return 0


# --------------------------------------------------------------------- generate
def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint folder"
    )
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument(
        "--freeze-memory",
        action="store_true",
        help="turn off test-time memory updates (families that learn in context)",
    )
    _add_stream_args(p, None)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from nestlearn.train.run import load_run

    _check_sampling_args(args)
    run = load_run(args.checkpoint)
    _freeze(run.model, run.cfg.model.family, args.freeze_memory)
    _check_state_out(args, run.model)
    if args.state_in or args.state_out:
        print(_stream_text(run, args, torch))
        return 0
    print(
        _sample_text(
            run.model,
            run.tokenizer,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.num_samples,
            torch,
        )
    )
    return 0


def _check_sampling_args(args: argparse.Namespace) -> None:
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
    state = _load_state_arg(args, run)
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
    _save_state_arg(args, run, state)
    new = [t for t in out[0, len(ids) :].tolist() if t != tok.eos_id]
    return args.prompt + tok.decode(new)


def _sample_text(model, tok, prompt, n, temperature, top_k, top_p, seed, num_samples, torch) -> str:  # noqa: ANN001
    from nestlearn.models import FAMILIES
    from nestlearn.models.generation import generate

    # training streams separate documents with eos, so eos is what precedes a document start
    ids = tok.encode(prompt) if prompt else []
    if tok.eos_id is not None:
        ids = [tok.eos_id] + ids
    idx = torch.tensor([ids] * num_samples, dtype=torch.long)
    use_state = FAMILIES[model.cfg.family].supports_decode
    out, _ = generate(
        model,
        idx,
        n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=tok.eos_id,
        use_state=use_state,
    )
    texts = []
    for row in out.tolist():
        new = [t for t in row[len(ids) :] if t != tok.eos_id]
        texts.append(prompt + tok.decode(new))
    return "\n---\n".join(texts)


# --------------------------------------------------------------------- list
def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="model families and presets")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from nestlearn.models import FAMILIES, PRESET_NOTES, PRESETS, build_model, preset_config
    from nestlearn.train.report import format_table

    print("families:")
    print(
        format_table(
            ["family", "decode", "description"],
            [
                [f.name, "yes" if f.supports_decode else "no", f.description]
                for f in FAMILIES.values()
            ],
        )
    )
    print(
        "\npresets (parameters at the preset's vocabulary; 'tok' = set by the tokenizer, shown at 256):"
    )
    rows = []
    for name in PRESETS:
        cfg = preset_config(name)
        vocab = cfg.vocab_size or 256
        cfg.vocab_size = vocab
        n = build_model(cfg, meta=True).num_params()
        rows.append(
            [
                name,
                cfg.family,
                f"{n / 1e6:.1f}M",
                vocab if PRESETS[name].get("vocab_size") else "tok",
                PRESET_NOTES[name],
            ]
        )
    print(format_table(["preset", "family", "params", "vocab", "note"], rows))
    return 0


# --------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: train Hope and Transformer++ on the embedded corpus, compare, plot",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=150,
        help="optimizer steps per model (default 150 x 16 x 256 tokens: about 10 minutes for "
        "both models on 2 CPU cores)",
    )
    p.add_argument(
        "--models",
        default="hope-tiny,transformer-tiny",
        help="comma-separated presets trained at the same token budget (default "
        "hope-tiny,transformer-tiny, matched in parameter count)",
    )
    p.add_argument("--preset", default=None, help=argparse.SUPPRESS)  # old single-model flag
    p.add_argument("--out", default=None, help="folder (default runs/demo-<time>)")
    p.add_argument("--force", action="store_true", help="replace runs already in --out")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.report import format_table, plot_losses

    t0 = time.perf_counter()
    presets = (
        [args.preset] if args.preset else [m.strip() for m in args.models.split(",") if m.strip()]
    )
    if not presets:
        raise UsageError("--models is empty; try --models hope-tiny,transformer-tiny")
    overrides = [
        f"train.steps={args.steps}",
        f"train.eval_every={max(1, args.steps // 3)}",
        f"train.ckpt_every={max(1, args.steps // 3)}",
        "data.batch_size=16",
        "train.eval_tokens=32768",
        "schedule.warmup_steps=30",
        "optim.lr=3e-3",
    ] + list(args.overrides)
    cfgs = {name: resolve_config(name, None, overrides) for name in presets}  # fail fast
    root = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    first = cfgs[presets[0]]
    _print(
        f"nestlearn demo: training {', '.join(presets)} on the embedded public-domain corpus, "
        f"each {first.train.steps} steps x {first.data.batch_size} x {first.data.seq_len} tokens "
        f"(tokenizer {first.data.tokenizer}); folder {root}"
    )
    rows, runs, trainers = [], {}, {}
    for name in presets:
        run_dir = root / name if len(presets) > 1 else root
        trainer = Trainer(cfgs[name], run_dir=run_dir, force=args.force)
        _print(f"\n[{name}] {trainer.params:,} parameters; run folder: {run_dir}")
        result = trainer.fit()
        if result.interrupted:
            _print(f"interrupted; resume with: nestlearn train --resume {run_dir}")
            return EXIT_INTERRUPTED
        test = trainer.evaluate_split("test")
        ev = result.final_eval
        tok_s = (
            result.steps
            * first.data.batch_size
            * first.data.seq_len
            / max(result.wall_time_s, 1e-9)
        )
        rows.append(
            [
                name,
                trainer.params,
                result.steps,
                f"{result.wall_time_s:.0f}s",
                f"{tok_s:,.0f}",
                ev["loss"],
                ev["ppl"],
                ev["bpb"],
                test["ppl"],
                test["bpb"],
            ]
        )
        runs[name], trainers[name] = run_dir, trainer
    png = plot_losses(
        runs,
        root / "loss_curves.png",
        title=" vs ".join(presets) + " on the nestlearn corpus (same data and token budget)",
    )
    _print("")
    _print(
        format_table(
            [
                "model",
                "params",
                "steps",
                "train time",
                "train tok/s",
                "val loss",
                "val ppl",
                "val bits/byte",
                "test ppl",
                "test bits/byte",
            ],
            rows,
        )
    )
    (root / "demo.md").write_text(
        "# nestlearn demo\n\n```\n"
        + format_table(
            [
                "model",
                "params",
                "steps",
                "train time",
                "train tok/s",
                "val loss",
                "val ppl",
                "val bits/byte",
                "test ppl",
                "test bits/byte",
            ],
            rows,
        )
        + "\n```\n",
        encoding="utf-8",
    )
    _print(f"\nloss curves: {png}\ntable: {root / 'demo.md'}")
    name = presets[0]
    sample = _sample_text(
        trainers[name].model, trainers[name].tokenizer, "The ", 300, 0.8, None, 0.95, 0, 1, torch
    )
    _print(f"\n{name} sample (temperature 0.8, top-p 0.95):\n{sample}\n")
    _print(f"total wall time {time.perf_counter() - t0:.0f}s")
    return 0


# --------------------------------------------------------------------- main
def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands defined in ``nestlearn/commands/*.py`` (see that package's docstring)."""
    import importlib
    import pkgutil

    import nestlearn.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"nestlearn.commands.{info.name}")
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=getattr(mod, "__doc__", None))
        mod.add_args(p)
        p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nestlearn",
        description="Nested Learning (Hope, Titans, CMS, deep optimizers) in PyTorch.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    from nestlearn import __version__

    parser.add_argument("--version", action="version", version=f"nestlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_list(sub)
    from nestlearn.bench import add_bench_args, run_bench
    from nestlearn.data.prepare import add_prepare_args, run_prepare

    p = sub.add_parser("prepare", help="tokenize text files, folders or JSONL into memmap shards")
    add_prepare_args(p)
    p.set_defaults(func=run_prepare)
    p = sub.add_parser("bench", help="throughput, memory and MFU of model families")
    add_bench_args(p)
    p.set_defaults(func=run_bench)
    _add_plugin_commands(sub)
    return parser


def _os_error(e: OSError) -> str:
    """An OSError as one line naming the path and what to do; files written before are kept."""
    import errno

    where = f" ({e.filename})" if e.filename else ""
    fix = {
        errno.ENOSPC: "free disk space and run the command again",
        errno.EDQUOT: "free disk space (quota) and run the command again",
        errno.EFBIG: "raise the file-size limit (ulimit -f) and run the command again",
        errno.EROFS: "the file system is read-only: choose a writable output folder",
        errno.EACCES: "no permission: choose a writable output folder",
        errno.EPERM: "no permission: choose a writable output folder",
        errno.EEXIST: "the path already exists: choose another one",
        errno.ENOTDIR: "a path component is a file, not a folder: choose another path",
        errno.EISDIR: "the path is a folder, not a file: choose a file path",
    }.get(e.errno or 0, "check the path and run the command again")
    return f"{e.strerror or e}{where}; {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from nestlearn.train.checkpoint import CheckpointError, CheckpointWriteError
    from nestlearn.train.config import ConfigError
    from nestlearn.train.guards import TrainingStopped

    try:
        return int(args.func(args) or 0)
    except (CheckpointWriteError, TrainingStopped) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only folder, permission denied, ...
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
