"""Offline lm-evaluation-harness task configs for the eight shipped zero-shot tasks.

One YAML per task (``nestlearn_piqa``, ``nestlearn_arc_easy``, ``nestlearn_arc_challenge``,
``nestlearn_winogrande``, ``nestlearn_boolq``, ``nestlearn_social_iqa``,
``nestlearn_lambada_openai``, ``nestlearn_wikitext``; tag ``nestlearn_paper`` = all eight),
with lm-eval 0.4.13's prompts and metrics, reading local files through
``nestlearn_offline.py``. Use them with ``TaskManager(include_path=TASKS_DIR,
metadata={"data_dir": DIR})`` or ``lm_eval --include_path <this folder> --metadata
'{"data_dir": "DIR"}'``; :mod:`nestlearn.studies.lm_eval_adapter` does this for you.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
"""This folder (pass it to lm-eval as ``include_path``)."""
