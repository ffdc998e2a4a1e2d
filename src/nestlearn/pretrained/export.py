"""Write a loaded pretrained model as a nestlearn run folder.

The folder has the layout ``nestlearn train`` produces, so ``nestlearn eval``, ``nestlearn
generate``, the zero-shot tasks (``nestlearn eval --tasks``), the lm-eval adapter and
``nestlearn train --resume`` (continual pre-training) all open it::

    <out>/config.yaml                       model, data (tokenizer), optimizer, schedule, budget
    <out>/tokenizer.json                    the tokenizer (data.tokenizer = hf:<out>/tokenizer.json)
    <out>/checkpoints/step_00000000/        model.safetensors (float32), meta.json, optim.safetensors
    <out>/pretrained.json                   provenance: source, sha256, GGUF metadata, conversion

The checkpoint is step 0 and holds no optimizer state, so ``nestlearn train --resume <out>``
starts continual pre-training from the pretrained weights with a fresh optimizer and runs the
``train`` section's budget (override it on the command line, e.g. ``train.steps=200``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestlearn.models import LanguageModel
from nestlearn.optim.config import OptimConfig
from nestlearn.train.checkpoint import list_checkpoints, save_checkpoint
from nestlearn.train.config import (
    DataConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    config_dict,
    dump_config,
)

__all__ = ["ContinualBudget", "write_run"]


@dataclass
class ContinualBudget:
    """The ``train`` defaults written into the folder: a CPU-sized continual pre-training run.

    The defaults (16 steps x 2 x 512 = 16,384 tokens of the embedded corpus, AdamW at 3e-5) are
    sized for two CPU cores and a 135M model (docs/pretrained.md has the measured time); raise
    them with overrides. 512-token sequences let a level of period 256 update once per sequence.
    """

    steps: int = 16
    batch_size: int = 2
    seq_len: int = 512
    lr: float = 3e-5
    warmup_steps: int = 3
    weight_decay: float = 0.0
    eval_tokens: int = 8192


def write_run(
    out: str | Path,
    model: LanguageModel,
    tokenizer_json: str,
    *,
    provenance: dict[str, Any],
    budget: ContinualBudget | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (float32) and its tokenizer as a run folder at ``out``; returns it.

    Raises:
        FileExistsError: ``out`` already holds checkpoints and ``overwrite`` is False.
    """
    out = Path(out)
    b = budget or ContinualBudget()
    if list_checkpoints(out / "checkpoints"):
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a run; choose another --out or pass --force to replace it"
            )
        shutil.rmtree(out / "checkpoints")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = (out / "tokenizer.json").resolve()
    tok_path.write_text(tokenizer_json, encoding="utf-8")
    cfg = TrainConfig(
        model=model.cfg,
        optim=OptimConfig(name="adamw", lr=b.lr, weight_decay=b.weight_decay),
        data=DataConfig(tokenizer=f"hf:{tok_path}", seq_len=b.seq_len, batch_size=b.batch_size),
        schedule=ScheduleConfig(warmup_steps=b.warmup_steps),
        train=RunConfig(
            steps=b.steps,
            eval_every=0,
            eval_tokens=b.eval_tokens,
            ckpt_every=0,
            name=out.name,
            keep_last=2,
        ),
    )
    dump_config(cfg, out / "config.yaml")
    state = {k: v.float() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("head.weight", None)  # the same tensor as embed.weight; load_run re-ties it
    save_checkpoint(
        out / "checkpoints",
        0,
        state,
        None,
        {"tokens_seen": 0, "params": model.num_params(), "pretrained": provenance.get("name")},
        keep_last=2,
        config=config_dict(cfg),
    )
    (out / "pretrained.json").write_text(
        json.dumps(provenance, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return out
