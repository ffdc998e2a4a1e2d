"""The ``nestlearn`` command. Thin: parse, build configs, call ``train`` / ``eval`` / ``studies``.

nestlearn demo                       the main job (train, evaluate, plot, sample)
nestlearn train --preset NAME [k=v]  train from a preset or --config FILE.yaml
nestlearn eval --checkpoint RUN      perplexity and bits-per-byte
nestlearn generate --checkpoint RUN  sample text
nestlearn prepare FILES --out DIR    tokenize text into memmap shards
nestlearn list                       families and presets
nestlearn bench --model NAME ...     throughput, memory and MFU

One module per command, all registered the same way. A command module defines ``COMMAND`` (the
subcommand name), ``HELP`` (one line for the command list), ``DESCRIPTION`` (the text above
``nestlearn COMMAND -h``'s options, or ``None``), ``add_args(parser)`` and ``run(args) -> int``.
:func:`build_parser` adds the modules of :data:`FIRST` in that order, then every other public
module of this package alphabetically, so a new command is one new file and no edit here.
Modules whose name starts with ``_`` are helpers (``_common``: the usage error and shared
flags). Exit codes: 0 done, 1 a failure while working (disk full, training stopped), 2 a bad
command line or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

from nestlearn.cli._common import EXIT_INTERRUPTED, UsageError, setup_logging

__all__ = ["EXIT_INTERRUPTED", "FIRST", "UsageError", "build_parser", "command_modules", "main"]

# The commands listed first by `nestlearn -h`, in this order; the others follow alphabetically.
FIRST = ("demo", "train", "eval", "generate", "list", "prepare", "bench")


def command_modules() -> list[ModuleType]:
    """Every command module, in the order ``nestlearn -h`` lists them."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    names = [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]
    return [importlib.import_module(f"{__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    """The ``nestlearn`` parser with one subparser per command module."""
    parser = argparse.ArgumentParser(
        prog="nestlearn",
        description="Nested Learning (Hope, Titans, CMS, deep optimizers) in PyTorch.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    from nestlearn import __version__

    parser.add_argument("--version", action="version", version=f"nestlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=mod.DESCRIPTION)
        mod.add_args(p)
        p.set_defaults(func=mod.run)
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


def _busy_machine_threads() -> None:
    """Fewer torch threads when other processes keep cores busy (``utils.threads``); a thread
    count the user set (``OMP_NUM_THREADS``, or a command's own ``--threads`` /
    ``train.threads``, applied later) wins."""
    import logging

    import torch

    from nestlearn.utils.threads import auto_threads

    if os.environ.get("OMP_NUM_THREADS"):
        return
    now = torch.get_num_threads()
    if now <= 1:  # nothing to lower: skip the 0.1 s measurement
        return
    pick = auto_threads(now)
    if pick < now:
        logging.getLogger("nestlearn").info(
            "other processes keep %d of this machine's cores busy: using %d torch thread(s) "
            "instead of %d (set OMP_NUM_THREADS or the command's thread option to override)",
            now - pick, pick, now,
        )  # fmt: skip
        torch.set_num_threads(pick)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from nestlearn.train.checkpoint import CheckpointError, CheckpointWriteError
    from nestlearn.train.config import ConfigError
    from nestlearn.train.guards import TrainingStopped

    _busy_machine_threads()
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
