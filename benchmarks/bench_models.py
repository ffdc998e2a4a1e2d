"""Throughput, memory and MFU of model families, measured in one process.

A thin wrapper over :mod:`nestlearn.cli.bench` (the same options as ``nestlearn bench``)::

    python benchmarks/bench_models.py --model transformer --dim 256 --layers 4 \\
        --vocab 256 --batch 4 --seq 512 --threads 2 --json

See docs/benchmarks.md for the fields and how MFU is computed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nestlearn.cli.bench import add_args, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
