"""Knowledge incorporation: generated facts learned from documents, answered without them.

The model reads fictional biographies (invented people, towns and years) and then answers
multiple-choice questions about them with the documents no longer in context. Methods: no
documents, documents in context (upper bound), fine-tuning on the documents (AdamW), and
Hope-1/2/3 (SmolLM2-135M's MLPs stacked into CMS levels that learn from the streamed documents).
Also reports how each method changes the perplexity of the embedded corpus (what it forgot).

Writes OUT/results.md, OUT/results.json, OUT/knowledge.png and OUT/cells/ (one file per finished
seed and method, reused when the command is run again with the same settings).

Examples:
  nestlearn knowledge --out runs/knowledge
  nestlearn knowledge --out runs/knowledge --seeds 0,1,2 --ft-steps 20 --threads 1
See docs/continual.md, "Knowledge incorporation".
"""

from __future__ import annotations

import argparse

from nestlearn.cli.ctnl import add_model_args, ints, run_study

COMMAND = "knowledge"
HELP = "knowledge incorporation: facts from documents via context, fine-tuning or Hope levels"
DESCRIPTION = __doc__


def add_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--levels", type=ints, default=[1, 2, 3], help="Hope-k for each k")
    p.add_argument("--entities", type=int, default=10, help="biographies per seed")
    p.add_argument("--options", type=int, default=4, help="options per question")
    p.add_argument("--passes", type=int, default=1, help="Hope: passes over the documents")
    p.add_argument("--ft-steps", type=int, default=10, help="fine-tuning: AdamW steps")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning: learning rate")
    p.add_argument("--ppl-tokens", type=int, default=4096, help="corpus tokens for perplexity")
    p.add_argument("--ppl-window", type=int, default=512, help="perplexity window in tokens")


def run(args: argparse.Namespace) -> int:
    from nestlearn.studies.knowledge import KnowledgeConfig, run_knowledge

    def make_config() -> KnowledgeConfig:
        return KnowledgeConfig(
            seeds=args.seeds, levels=args.levels, periods=args.periods, level_lr=args.level_lr,
            passes=args.passes, n_entities=args.entities, n_options=args.options,
            ft_steps=args.ft_steps, ft_lr=args.ft_lr, ppl_tokens=args.ppl_tokens,
            ppl_window=args.ppl_window, window=args.window,
        )  # fmt: skip

    return run_study(args, make_config, run_knowledge)
