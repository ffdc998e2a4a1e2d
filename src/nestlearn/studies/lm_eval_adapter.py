"""A ``nestlearn`` model type for EleutherAI's lm-evaluation-harness (optional extra).

Install with ``pip install 'nestlearn[eval]'`` (lm-eval 0.4.x). Importing this module
registers the model under the name ``nestlearn``; the scoring itself is
:class:`nestlearn.eval.zeroshot.LMScorer`, so lm-eval and ``nestlearn eval --tasks`` give the
same numbers (tested). Three ways in:

* Python: :func:`evaluate_with_lm_eval` (model + tokenizer, or a run folder) runs the offline
  task configs of :mod:`nestlearn.eval.lm_eval_tasks` and returns ``{task: metrics}`` in the
  native scorer's format.
* lm-eval's own CLI with the model registered::

      python -m nestlearn.studies.lm_eval_adapter --model nestlearn --batch_size 16 \\
          --model_args checkpoint=runs/x,freeze_memory=false \\
          --tasks nestlearn_paper --include_path $(python -c "from nestlearn.eval.lm_eval_tasks \\
          import TASKS_DIR; print(TASKS_DIR)") --metadata '{"data_dir": "../shared/datasets"}'

  (any other lm-eval task works too when its data can be downloaded).
* ``NESTLEARN_EVAL_BACKEND=lm-eval nestlearn eval --checkpoint RUN --tasks all --data-dir DIR``.

Model arguments: ``checkpoint`` (run or checkpoint folder), ``batch_size`` (from Python; on
lm-eval's command line use its ``--batch_size`` flag), ``max_length``
(default the model's ``max_seq_len``), ``freeze_memory`` (turn test-time memory updates off
through the ``set_memory_updates`` hook), ``device``.

It sits in ``studies`` rather than ``eval`` because ``checkpoint=`` opens a run folder
(:func:`nestlearn.train.run.load_run`) and ``eval`` imports nothing from ``train``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nestlearn.eval.lm_eval_tasks import TASKS_DIR
from nestlearn.eval.zeroshot.scorer import LMScorer, set_memory_updates
from nestlearn.eval.zeroshot.specs import TASKS

INSTALL_HINT = (
    "the lm-eval backend needs EleutherAI's lm-evaluation-harness: "
    "pip install 'nestlearn[eval]'  (or: pip install 'lm-eval>=0.4.13,<0.5' "
    "'torch==<your installed version>', which keeps your torch build)"
)

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"{INSTALL_HINT} ({e})") from e

logger = logging.getLogger(__name__)

TASK_PREFIX = "nestlearn_"


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, got {v!r}")
    return bool(v)


def _pick_device(device: str | None) -> str:
    """``device``, or CPU when it names a CUDA device this machine lacks (lm-eval's CLI
    passes ``cuda`` by default)."""
    if not device:
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device %s is not available; evaluating on cpu", device)
        return "cpu"
    return device


def _register(cls: type) -> type:
    try:
        return register_model("nestlearn")(cls)
    except ValueError:
        # already registered: this module was run with ``python -m`` and imported as well
        logger.debug("lm-eval model 'nestlearn' was already registered")
        return cls


@_register
class NestlearnLM(TemplateLM):
    """lm-eval model over a nestlearn ``LanguageModel``.

    Args:
        checkpoint: run folder (newest good checkpoint) or one checkpoint folder; or pass
            ``model`` and ``tokenizer`` directly.
        batch_size: sequences per forward pass.
        max_length: tokens the model sees at once (default ``model.cfg.max_seq_len``).
        freeze_memory: turn off test-time memory updates (``set_memory_updates(False)``).
        device: where to load the checkpoint (``cpu``, ``cuda``...).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        batch_size: int | str | None = 16,
        max_length: int | None = None,
        freeze_memory: bool | str = False,
        device: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            logger.info("nestlearn lm-eval model ignores arguments %s", sorted(unused))
        if model is None:
            if not checkpoint:
                raise ValueError("give checkpoint=RUN_DIR (or model= and tokenizer= from Python)")
            from nestlearn.train.run import load_run

            run = load_run(checkpoint, device=_pick_device(device))
            model, tokenizer = run.model, run.tokenizer
        elif tokenizer is None:
            raise ValueError("a model passed from Python needs its tokenizer= too")
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 16
        self.freeze_memory = _as_bool(freeze_memory)
        if not set_memory_updates(model, not self.freeze_memory) and self.freeze_memory:
            logger.warning("freeze_memory: this model has no test-time memory; nothing to turn off")
        self.scorer = LMScorer(model, tokenizer, max_length=max_length, batch_size=int(batch_size))
        self.model = model
        self.tokenizer_obj = tokenizer

    # ---------------------------------------------------------------- properties
    @property
    def eot_token_id(self) -> int:
        return self.scorer.prefix_id

    @property
    def prefix_token_id(self) -> int:
        return self.scorer.prefix_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer_obj, "name", "nestlearn"))

    # ----------------------------------------------------------------- tokenising
    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kw: Any
    ) -> list[int]:
        return self.scorer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kw: Any) -> str:
        return self.tokenizer_obj.decode(list(tokens))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # the native rule: lm-eval's split plus the document-start id before the context
        return self.scorer.encode_pair(context, continuation)

    # -------------------------------------------------------------------- scoring
    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kw: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        results = self.scorer.loglikelihood_tokens(pairs)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        out = self.scorer.loglikelihood_rolling(texts)
        for text, ll in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        batch = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(kwargs.pop("max_gen_toks", 256))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                logger.warning("nestlearn lm-eval model decodes greedily; sampling args ignored")
            batch.append((context, list(until), max_new))
        out = self.scorer.generate_until(batch)
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


# ------------------------------------------------------------------------ helpers
def task_manager(data_dir: str | Path) -> Any:
    """An lm-eval ``TaskManager`` with only the offline nestlearn tasks, reading ``data_dir``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )


def _convert(task: str, res: dict[str, Any], n: int | None) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": x, "acc_stderr,none": s}`` -> the native ``{"acc": x, ...}``."""
    out: dict[str, Any] = {}
    for key, val in res.items():
        metric, _, filt = key.partition(",")
        if filt != "none" or isinstance(val, str):
            continue
        out[metric] = float(val)
    if n is not None:
        out["n"] = n
    return out


def evaluate_with_lm_eval(
    tasks: Sequence[str],
    data_dir: str | Path,
    *,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    checkpoint: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    freeze_memory: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run shipped tasks (canonical names, e.g. ``["piqa", "wikitext"]``) through lm-eval.

    Returns ``{task: {metric: value, ..., "n": examples}}`` with the metric names of
    :func:`nestlearn.eval.zeroshot.evaluate_tasks`.
    """
    from lm_eval.evaluator import simple_evaluate

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the offline configs cover {list(TASKS)}")
    lm = NestlearnLM(
        str(checkpoint) if checkpoint is not None else None,
        model=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        freeze_memory=freeze_memory,
    )
    out = simple_evaluate(
        model=lm,
        tasks=[TASK_PREFIX + t for t in tasks],
        task_manager=task_manager(data_dir),
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
        num_fewshot=0,
    )
    if out is None:  # non-zero rank in a distributed run
        return {}
    n_samples = out.get("n-samples", {})
    results = {}
    for t in tasks:
        key = TASK_PREFIX + t
        n = n_samples.get(key, {}).get("effective")
        results[t] = _convert(t, out["results"][key], n)
    return results


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``nestlearn`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
