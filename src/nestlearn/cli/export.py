"""Export a training run as a Hugging Face model folder (needs ``pip install "nestlearn[hf]"``).

Writes config.json, model.safetensors, the tokenizer files, training_config.yaml and a
README.md model card (training config, evaluation results found in the run folder) to --out,
atomically, after checking that the reloaded folder gives the run's logits. Load it with
``import nestlearn`` and ``AutoModelForCausalLM.from_pretrained(OUT)``. See docs/hf.md.

Examples:
  nestlearn export --checkpoint runs/demo --out exported/demo
  nestlearn export --checkpoint runs/demo/checkpoints/step_00000400 --out exported/demo --force
"""

from __future__ import annotations

import argparse

from nestlearn.cli._common import add_checkpoint_arg

COMMAND = "export"
HELP = "write a Hugging Face folder (config, safetensors, tokenizer, model card) from a run"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it already exists")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading the folder and comparing its logits with the run's model",
    )


def run(args: argparse.Namespace) -> int:
    try:
        from transformers.utils import logging as hf_logging

        from nestlearn.hf.export import export_run
    except ImportError as e:
        raise ValueError(f"{e}") from None
    hf_logging.disable_progress_bar()  # one summary line is printed instead
    try:
        res = export_run(args.checkpoint, args.out, force=args.force, verify=not args.no_verify)
    except (FileExistsError, RuntimeError) as e:
        raise ValueError(str(e)) from None
    check = (
        "not verified"
        if res.max_abs_diff is None
        else f"reloaded logits match (max abs diff {res.max_abs_diff:.2g})"
    )
    print(
        f"exported {res.family} ({res.params:,} parameters, step {res.step}) to {res.out}: "
        f"{', '.join(res.files)}; {check}"
    )
    return 0
