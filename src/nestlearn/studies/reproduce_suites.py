"""The suites of ``nestlearn reproduce --suite``: what each trains and evaluates, and how big.

``reproduce.py`` runs a suite; a suite field a stage reads is part of that stage's cache key
(``reproduce.STAGE_FIELDS``), so editing a suite here never reuses a stale result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SUITES", "Suite"]


@dataclass(frozen=True)
class Suite:
    """What one ``--suite`` trains and evaluates, and how big each part is."""

    name: str
    description: str
    models: tuple[str, ...] | None
    """Presets or families; None = every family with a ``-tiny`` preset (read at run time)."""
    tokens: int
    """Training tokens per language-model run."""
    seeds: int
    batch_size: int = 16
    seq_len: int = 256
    eval_tokens: int = 65536
    """Validation and test tokens scored per run."""
    zeroshot_limit: int | None = 200
    """Items per zero-shot task (None = all)."""
    wikitext_limit: int | None = 8
    """WikiText-2 articles scored (None = all 62). An article is ~20K byte tokens scored by
    rolling windows, so 50 of them cost more than the other seven tasks together."""
    niah_tasks: tuple[str, ...] = ("s_niah_1", "s_niah_2", "s_niah_3", "mk_niah_1")
    niah_lengths: tuple[int, ...] = (1024, 2048, 4096)
    """Byte-tokenized RULER templates need >= 446 tokens (S-NIAH) and >= 638 (MK-NIAH-1)."""
    niah_samples: int = 10
    recall_tasks: tuple[str, ...] = ("mqar", "in_context_recall", "selective_copying")
    recall_steps: int = 300
    recall_num_train: int = 4000
    recall_num_test: int = 500
    formal_languages: tuple[str, ...] = ("parity", "aa_star", "anbn", "shuffle2")
    formal_steps: int = 300
    formal_num_train: int = 4000
    formal_num_test: int = 300
    synthetic_seeds: int = 1
    """Seeds for the MQAR/MAD/formal/S-NIAH recipes (each trains its own small model)."""
    sniah_tasks: tuple[str, ...] = ("s_niah_1", "s_niah_2", "s_niah_3")
    """S-NIAH analogue tasks (``nestlearn.studies.sniah``); empty = stage skipped."""
    sniah_families: tuple[str, ...] = ("transformer", "titans", "hope", "ttt-mlp", "mamba2")
    sniah_train_length: int = 512
    sniah_lengths: tuple[int, ...] = (512, 2048, 8192)
    sniah_steps: int = 600
    sniah_samples: int = 100
    context_length: int = 512
    context_windows: int = 16
    threads: int = 2
    ttl_model: str = "smollm2-135m"
    """The model whose MLPs ``levels``, ``ctnl`` and ``knowledge`` stack into CMS levels: a
    pretrained name (used only when its GGUF is on disk: ``nestlearn pretrained smollm2-135m``
    fetches it once, or ``--gguf FILE``; absent, those studies are skipped) or ``run:<family>``,
    the suite's own first finished run of that family (``reproduce_studies``)."""
    levels: dict[str, Any] | None = None
    """``nestlearn levels`` (Fig. 7 analogue): ``LevelsConfig`` fields instead of the command's
    defaults; ``{}`` = the defaults, ``None`` = not in this suite. The same for ``ctnl``
    (``CTNLConfig``), ``knowledge`` (``KnowledgeConfig``) and ``vit_optim`` (the fields of
    ``ViTConfig``, ``TrainSettings`` and ``StudySettings``, and ``lrs``: every optimizer's grid)."""
    ctnl: dict[str, Any] | None = None
    knowledge: dict[str, Any] | None = None
    vit_optim: dict[str, Any] | None = None


SUITES: dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        description="plumbing check: two models, a tiny budget, one seed, tiny evaluations",
        models=("transformer", "deltanet"),
        tokens=8 * 256 * 24,
        seeds=1,
        batch_size=8,
        eval_tokens=4096,
        zeroshot_limit=4,
        wikitext_limit=2,
        niah_tasks=("s_niah_1", "s_niah_2"),
        niah_lengths=(512,),
        niah_samples=2,
        recall_tasks=("mqar",),
        recall_steps=20,
        recall_num_train=256,
        recall_num_test=64,
        formal_languages=("parity",),
        formal_steps=20,
        formal_num_train=256,
        formal_num_test=64,
        sniah_tasks=("s_niah_1",),
        sniah_families=("transformer",),
        sniah_train_length=64,
        sniah_lengths=(64, 128),
        sniah_steps=5,
        sniah_samples=4,
        context_length=512,
        context_windows=4,
        # the studies at plumbing size on the suite's own transformer (byte tokens, ~3M params):
        # all four together cost about 25 s of one thread (docs/reproduce.md)
        ttl_model="run:transformer",
        levels=dict(tasks=("longhealth",), doc_length=900, num_docs=1, num_questions=2,
                    levels=(0, 1), periods=(32,), window=64, call_len=32),
        ctnl=dict(levels=(0, 1), periods=(16, 32), n_parallel=1, n_test=2, n_nouns=2, n_verbs=1,
                  n_adjectives=1, max_new=3, window=512),
        knowledge=dict(levels=(1,), periods=(16, 32), n_entities=4, ft_steps=2, ppl_tokens=128,
                       ppl_window=64),
        vit_optim=dict(steps=10, eval_every=5, batch_size=16, dim=32, depth=1, lrs=(1e-2,),
                       seeds=1, timing_steps=2),
    ),
    # Budget: 14 families x 3 seeds = 42 runs of 204,800 tokens. Stage costs measured on the
    # 2-core machine (session 4, docs/reproduce.md "Measured cost") for the fuller `medium`
    # budget: training ~51 min idle, test perplexity ~19, zero-shot ~17, NIAH ~25, MQAR/MAD
    # ~80 (selective copying alone ~52), formal ~16, context ~1: ~3.5 h. `small` keeps the
    # training and trims the evaluations to fit ~2 h: half the validation/test tokens, 4 NIAH
    # samples per cell, MQAR and in-context recall at 200 steps (no selective copying).
    "small": Suite(
        name="small",
        description="every registered tiny preset, 3 seeds, the studies at reduced size, ~2.3 h on "
        "2 CPU cores",
        models=None,
        tokens=16 * 256 * 50,
        seeds=3,
        eval_tokens=16384,
        zeroshot_limit=50,
        wikitext_limit=4,
        niah_lengths=(1024, 2048),
        niah_samples=4,
        recall_tasks=("mqar", "in_context_recall"),
        recall_steps=200,
        formal_steps=200,
        sniah_tasks=(),  # the S-NIAH chart alone costs about an hour: medium has it
        # the studies at reduced size, measured at one thread (docs/reproduce.md): vit-optim
        # 3 rates x 3 optimizers + 1 more seed, 400 steps, ~2 min; on SmolLM2 (skipped where it
        # is not on disk) levels: one 1,024-token record, ICL and Hope-3 at period 256, ~1.5 min;
        # knowledge: Hope-3 only; ctnl: ICL and Hope-3
        levels=dict(tasks=("longhealth",), doc_length=1024, num_docs=1, levels=(0, 3),
                    periods=(256,)),
        ctnl=dict(levels=(0, 3)),
        knowledge=dict(levels=(3,)),
        vit_optim=dict(lrs=(3e-3, 1e-2, 3e-2), seeds=2, timing_steps=20, timing_widths=(64,)),
    ),
    "medium": Suite(
        name="medium",
        description="every registered tiny preset, 3 seeds, fuller evaluations and the studies at "
        "their defaults, ~4 h on 2 CPU cores",
        models=None,
        tokens=16 * 256 * 50,
        seeds=3,
        eval_tokens=32768,
        zeroshot_limit=50,
        wikitext_limit=4,
        niah_lengths=(1024, 2048),
        niah_samples=6,
        formal_steps=200,
        # every study at its command's defaults (about 40 min of one thread together)
        levels={},
        ctnl={},
        knowledge={},
        vit_optim={},
    ),
}
