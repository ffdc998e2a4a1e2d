"""Readers for the offline copies of the zero-shot evaluation sets.

Every reader returns the rows in the schema of the Hugging Face data set that
lm-evaluation-harness loads for the task (so lm-eval's own prompt templates apply to them
unchanged, see :mod:`nestlearn.eval.lm_eval_tasks`), read from a folder laid out like
``../shared/datasets``::

    DATA_DIR/
      piqa/valid.jsonl, piqa/valid-labels.lst                       PIQA validation
      arc/ARC-Easy-Test.jsonl, arc/ARC-Challenge-Test.jsonl          ARC test
      winogrande/dev.jsonl                                           WinoGrande 1.1 dev (xl)
      boolq/val.jsonl[.gz]                                           BoolQ (SuperGLUE) validation
      social_iqa/dev.jsonl, social_iqa/dev-labels.lst                Social IQa dev
      lambada_openai/lambada_test.jsonl[.gz]                         LAMBADA, OpenAI test file
      wikitext/wiki.test.raw[.gz]                                    WikiText-2 raw test

A file may be stored plain or gzip-compressed (``name.gz``); both are accepted.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "NESTLEARN_DATA_DIR"

LAYOUT = """\
  DIR/piqa/valid.jsonl + valid-labels.lst
  DIR/arc/ARC-Easy-Test.jsonl, ARC-Challenge-Test.jsonl
  DIR/winogrande/dev.jsonl
  DIR/boolq/val.jsonl(.gz)
  DIR/social_iqa/dev.jsonl + dev-labels.lst
  DIR/lambada_openai/lambada_test.jsonl(.gz)
  DIR/wikitext/wiki.test.raw(.gz)"""


class DataDirError(FileNotFoundError):
    """The task data folder is missing or does not have the expected layout."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The task data folder: ``data_dir``, else ``$NESTLEARN_DATA_DIR``.

    Raises :class:`DataDirError` naming the expected layout when neither is set or the
    folder does not exist.
    """
    raw = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not raw:
        raise DataDirError(
            f"no task data folder: pass --data-dir DIR or set {DATA_DIR_ENV}. DIR must hold the "
            f"evaluation sets in this layout (as in the project's shared/datasets):\n{LAYOUT}"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataDirError(f"task data folder {path} does not exist; expected layout:\n{LAYOUT}")
    return path


def find_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DataDirError(
        f"{folder / name} (or {name}.gz) not found; the task data folder must follow this "
        f"layout:\n{LAYOUT}"
    )


def read_text(path: Path) -> str:
    """UTF-8 text of ``path`` (gunzipped when it ends in ``.gz``)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for i, line in enumerate(read_text(path).splitlines()):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1} is not valid JSON ({e})") from None


def _labels(path: Path) -> list[str]:
    return [x.strip() for x in read_text(path).splitlines() if x.strip()]


def _zip_labels(rows: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    if len(rows) != len(labels):
        raise ValueError(
            f"{path} has {len(labels)} labels for {len(rows)} rows; the files must be aligned"
        )


# ---------------------------------------------------------------------------- readers
def read_piqa(root: Path) -> list[dict[str, Any]]:
    """PIQA validation: ``{goal, sol1, sol2, label: 0|1}`` (HF ``baber/piqa``)."""
    folder = root / "piqa"
    rows = list(_jsonl(find_file(folder, "valid.jsonl")))
    lab_path = find_file(folder, "valid-labels.lst")
    labels = _labels(lab_path)
    _zip_labels(rows, labels, lab_path)
    return [
        {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)}
        for r, y in zip(rows, labels)
    ]


def _read_arc(root: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for r in _jsonl(find_file(root / "arc", f"{name}-Test.jsonl")):
        q = r["question"]
        out.append(
            {
                "id": r["id"],
                "question": q["stem"],
                "choices": {
                    "text": [c["text"] for c in q["choices"]],
                    "label": [c["label"] for c in q["choices"]],
                },
                "answerKey": r["answerKey"],
            }
        )
    return out


def read_arc_easy(root: Path) -> list[dict[str, Any]]:
    """ARC-Easy test: ``{id, question, choices: {text, label}, answerKey}`` (HF ``allenai/ai2_arc``)."""
    return _read_arc(root, "ARC-Easy")


def read_arc_challenge(root: Path) -> list[dict[str, Any]]:
    """ARC-Challenge test, same schema as :func:`read_arc_easy`."""
    return _read_arc(root, "ARC-Challenge")


def read_winogrande(root: Path) -> list[dict[str, Any]]:
    """WinoGrande 1.1 dev: ``{sentence, option1, option2, answer: "1"|"2"}``."""
    return [
        {
            "sentence": r["sentence"],
            "option1": r["option1"],
            "option2": r["option2"],
            "answer": str(r["answer"]),
        }
        for r in _jsonl(find_file(root / "winogrande", "dev.jsonl"))
    ]


_BOOL = {"true": 1, "false": 0, True: 1, False: 0}  # True == 1 and False == 0 as keys


def read_boolq(root: Path) -> list[dict[str, Any]]:
    """BoolQ validation: ``{question, passage, idx, label: 0 (no) | 1 (yes)}``.

    The shipped copy stores ``label`` as the strings ``"true"``/``"false"`` (see its
    PROVENANCE.md); JSON booleans are accepted too.
    """
    path = find_file(root / "boolq", "val.jsonl")
    out = []
    for r in _jsonl(path):
        lab = r["label"].lower() if isinstance(r["label"], str) else r["label"]
        if lab not in _BOOL:
            raise ValueError(f"{path}: BoolQ label {r['label']!r} is not true/false")
        out.append(
            {
                "question": r["question"],
                "passage": r["passage"],
                "idx": r["idx"],
                "label": _BOOL[lab],
            }
        )
    return out


def read_social_iqa(root: Path) -> list[dict[str, Any]]:
    """Social IQa dev: ``{context, question, answerA, answerB, answerC, label: "1".."3"}``."""
    folder = root / "social_iqa"
    rows = list(_jsonl(find_file(folder, "dev.jsonl")))
    lab_path = find_file(folder, "dev-labels.lst")
    labels = _labels(lab_path)
    _zip_labels(rows, labels, lab_path)
    keys = ("context", "question", "answerA", "answerB", "answerC")
    return [{**{k: r[k] for k in keys}, "label": y} for r, y in zip(rows, labels)]


def read_lambada_openai(root: Path) -> list[dict[str, Any]]:
    """LAMBADA (OpenAI's detokenised test file): ``{text}``."""
    return [
        {"text": r["text"]}
        for r in _jsonl(find_file(root / "lambada_openai", "lambada_test.jsonl"))
    ]


def split_wikitext_articles(raw: str) -> list[str]:
    """Split raw WikiText into articles the way ``EleutherAI/wikitext_document_level`` does.

    A line whose stripped form (after collapsing ``"= = ="``/``"= ="``) is ``"= Title ="``
    starts a new article; lines are re-joined with ``"\\n"``; an all-blank leading chunk is
    dropped. WikiText-2 test gives 62 articles.
    """
    pages: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        flat = line.replace("= = =", "===").replace("= =", "==").strip()
        if flat.startswith("= ") and flat.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def read_wikitext(root: Path) -> list[dict[str, Any]]:
    """WikiText-2 raw test, one row per article: ``{page}`` (lm-eval's ``wikitext`` task)."""
    raw = read_text(find_file(root / "wikitext", "wiki.test.raw"))
    return [{"page": p} for p in split_wikitext_articles(raw)]
