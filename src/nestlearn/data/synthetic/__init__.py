"""Synthetic long-context, recall and formal-language tasks (generators only; no model code).

==================== =================================== ==========================================
module               tasks                               paper table (arXiv 2512.24695)
==================== =================================== ==========================================
:mod:`.niah`         RULER S-NIAH-1/2/3, MK-NIAH-1/2/3,  Table 1 (4K/8K/16K)
                     MV-NIAH, MQ-NIAH
:mod:`.babilong`     BABILong qa1-qa5                    Fig. 9
:mod:`.mqar`         Zoology MQAR                        (in-context recall, sec. 9.4)
:mod:`.mad`          MAD: recall, noisy/fuzzy recall,    Table 4
                     selective copying, compression,
                     memorization
:mod:`.formal`       Parity, (aa)*, (abab)*, aⁿbⁿ,       Table 5 (Bin0/Bin1)
                     aⁿbⁿcⁿ, Shuffle-2
:mod:`.records`      LongHealth-style patient records    Fig. 7 (effect of levels)
                     with multiple-choice questions
==================== =================================== ==========================================

Every generator is deterministic given its seed. Scoring and the CPU training recipes live in
``nestlearn.eval.niah``, ``nestlearn.eval.babilong``, ``nestlearn.studies.recall`` and
``nestlearn.studies.formal``; see ``docs/evaluation_synthetic.md``.
"""

from nestlearn.data.synthetic.babilong import (
    BABI_TASKS,
    BabiLongSample,
    BabiQuestion,
    babilong_sample,
    find_babi_dir,
    generate_babilong,
    load_babi,
)
from nestlearn.data.synthetic.common import (
    IGNORE_INDEX,
    TokenSegment,
    TokenTask,
    make_rng,
    parse_lengths,
)
from nestlearn.data.synthetic.formal import (
    FORMAL_BINS,
    FORMAL_LANGUAGES,
    FormalBatch,
    FormalLanguage,
    encode_formal,
    formal_strings,
)
from nestlearn.data.synthetic.haystack import Insert
from nestlearn.data.synthetic.mad import MAD_BASELINES, MAD_TASKS, mad_segment, mad_task
from nestlearn.data.synthetic.mqar import mqar_segment, mqar_task
from nestlearn.data.synthetic.niah import (
    NIAH_TASKS,
    RULER_DEPTHS,
    NIAHSample,
    NIAHTask,
    generate_niah,
    niah_sample,
)

__all__ = [
    "BABI_TASKS",
    "FORMAL_BINS",
    "FORMAL_LANGUAGES",
    "IGNORE_INDEX",
    "MAD_BASELINES",
    "MAD_TASKS",
    "NIAH_TASKS",
    "RULER_DEPTHS",
    "BabiLongSample",
    "BabiQuestion",
    "FormalBatch",
    "FormalLanguage",
    "Insert",
    "NIAHSample",
    "NIAHTask",
    "TokenSegment",
    "TokenTask",
    "babilong_sample",
    "encode_formal",
    "find_babi_dir",
    "formal_strings",
    "generate_babilong",
    "generate_niah",
    "load_babi",
    "mad_segment",
    "mad_task",
    "make_rng",
    "mqar_segment",
    "mqar_task",
    "niah_sample",
    "parse_lengths",
]
