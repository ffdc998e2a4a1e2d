"""Data loaders for the offline lm-eval task configs in this folder (used through ``!function``).

Each loader reads the local copy of a data set with :mod:`nestlearn.eval.zeroshot.readers`
(rows in the schema of the Hugging Face data set lm-eval normally downloads) and returns
``{split: datasets.Dataset}``. The data folder comes from the task metadata ``data_dir``
(``TaskManager(metadata={"data_dir": DIR})`` or ``lm_eval --metadata '{"data_dir": "DIR"}'``),
else from ``$NESTLEARN_DATA_DIR``.

WinoGrande and WikiText use lm-eval's own helper functions (re-exported below, not copied), so
running these configs through lm-eval cross-checks nestlearn's native prompt code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.tasks.wikitext.preprocess_wikitext import (  # noqa: F401 - used by wikitext.yaml
    process_results as wikitext_process_results,
)
from lm_eval.tasks.wikitext.preprocess_wikitext import (  # noqa: F401 - used by wikitext.yaml
    wikitext_detokenizer,
)
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401 - winogrande.yaml
    doc_to_choice as winogrande_doc_to_choice,
)
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401 - winogrande.yaml
    doc_to_target as winogrande_doc_to_target,
)
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # noqa: F401 - winogrande.yaml
    doc_to_text as winogrande_doc_to_text,
)

from nestlearn.eval.zeroshot import readers


def _load(split: str, reader: Callable[[Path], list[dict[str, Any]]], **meta: Any) -> dict:
    import datasets

    root = readers.resolve_data_dir(meta.get("data_dir"))
    return {split: datasets.Dataset.from_list(reader(root))}


def piqa(**meta: Any) -> dict:
    return _load("validation", readers.read_piqa, **meta)


def arc_easy(**meta: Any) -> dict:
    return _load("test", readers.read_arc_easy, **meta)


def arc_challenge(**meta: Any) -> dict:
    return _load("test", readers.read_arc_challenge, **meta)


def winogrande(**meta: Any) -> dict:
    return _load("validation", readers.read_winogrande, **meta)


def boolq(**meta: Any) -> dict:
    return _load("validation", readers.read_boolq, **meta)


def social_iqa(**meta: Any) -> dict:
    return _load("validation", readers.read_social_iqa, **meta)


def lambada_openai(**meta: Any) -> dict:
    return _load("test", readers.read_lambada_openai, **meta)


def wikitext(**meta: Any) -> dict:
    return _load("test", readers.read_wikitext, **meta)
