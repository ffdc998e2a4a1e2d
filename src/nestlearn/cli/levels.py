"""Effect of levels (arXiv 2512.24695 §9.1, Fig. 7 analogue): a pretrained model with 0 (ICL),
1, 2 and 3 stacked CMS levels reads long documents, then answers multiple-choice questions with
the document out of its attention window.

  longhealth: generated patient records (names, dates, drugs, doses, diagnoses) and questions
      about them; mk_niah: RULER MK-NIAH-1 haystacks (four needles; the options are their values).
  Writes OUT/results.md (accuracy against levels, per task and length), OUT/results.json and
  OUT/levels.png; finished cells (OUT/cells/*.json) with the same settings are reused, so a
  stopped run resumes.

Examples:
  nestlearn levels --out runs/levels
  nestlearn levels --out runs/levels --tasks mk_niah --niah-lengths 2k,4k,8k --num-niah 4
  nestlearn levels --out runs/levels --levels 0,3 --periods 512,2048 --doc-length 4096
See docs/levels.md for the protocol and the measured results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nestlearn.cli._common import (
    add_model_source_args,
    add_threads_arg,
    load_model_source,
    set_threads,
)

COMMAND = "levels"
HELP = "effect of stacked CMS levels on long-document QA and MK-NIAH (paper Fig. 7)"
DESCRIPTION = __doc__


def _ints(text: str, name: str) -> tuple[int, ...]:
    from nestlearn.data.synthetic.common import parse_lengths

    try:
        return tuple(parse_lengths(text))
    except ValueError as e:
        raise ValueError(f"--{name}: {e}") from None


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    p.add_argument("--tasks", default="longhealth,mk_niah", help="longhealth and/or mk_niah")
    p.add_argument("--levels", default="0,1,2,3", help="numbers of stacked levels (0 = ICL)")
    p.add_argument("--periods", default="256,1024",
                   help="lowest-frequency update periods in tokens, one curve each")  # fmt: skip
    p.add_argument("--ratio", type=int, default=2, help="period ratio between levels (default 2)")
    p.add_argument("--doc-length", default="1536", help="tokens per patient record")
    p.add_argument("--num-docs", type=int, default=2, help="patient records (default 2)")
    p.add_argument("--num-questions", type=int, default=7, help="questions per record (1..7)")
    p.add_argument("--niah-lengths", default="2k",
                   help="MK-NIAH lengths, e.g. 2k,4k,8k (default 2k)")  # fmt: skip
    p.add_argument("--num-niah", type=int, default=1,
                   help="MK-NIAH haystacks per length, 4 questions each (default 1)")  # fmt: skip
    p.add_argument("--window", type=int, default=512, help="attention window while reading")
    p.add_argument("--level-lr", type=float, default=0.1,
                   help="levels' inner learning rate (default 0.1)")  # fmt: skip
    p.add_argument("--call-len", type=int, default=128, help="tokens per learning call")
    p.add_argument("--no-in-context", action="store_true",
                   help="skip the whole-document-in-attention reference")  # fmt: skip
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite the report from the finished cells")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    add_threads_arg(p)
    add_model_source_args(p.add_argument_group("model"))


def _loader(args: argparse.Namespace):  # noqa: ANN202 - () -> (model, tokenizer)
    needs = (
        "the levels experiment needs a 'transformer' (Transformer++) checkpoint, whose MLPs "
        "become the levels"
    )

    def load():  # noqa: ANN202
        return load_model_source(args, needs, ValueError, float32=True)

    return load


def run(args: argparse.Namespace) -> int:

    from nestlearn.studies.levels import LevelsConfig
    from nestlearn.studies.levels_run import run_levels

    set_threads(args.threads)
    try:
        doc_length = _ints(args.doc_length, "doc-length")
        if len(doc_length) != 1:
            raise ValueError(f"--doc-length takes one length, got {args.doc_length!r}")
        cfg = LevelsConfig(
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            doc_length=doc_length[0], num_docs=args.num_docs, num_questions=args.num_questions,
            niah_lengths=_ints(args.niah_lengths, "niah-lengths"), num_niah=args.num_niah,
            levels=_ints(args.levels, "levels"), periods=_ints(args.periods, "periods"),
            ratio=args.ratio, window=args.window, level_lr=args.level_lr,
            call_len=args.call_len, in_context=not args.no_in_context, seed=args.seed,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}")
        return 2
    name = str(Path(args.checkpoint).resolve()) if args.checkpoint else (
        f"gguf:{Path(args.gguf).name}" if args.gguf else args.pretrained)  # fmt: skip
    try:
        run_levels(args.out, _loader(args), cfg, model_name=name, progress=print,
                   report_only=args.report_only)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"levels report: {Path(args.out) / 'results.md'}")
    return 0
