"""Open a finished or running training run: its config, model weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nestlearn.models import LanguageModel, build_model
from nestlearn.train.checkpoint import CheckpointError, load_checkpoint, load_latest
from nestlearn.train.config import TrainConfig, from_dict, load_run_config
from nestlearn.train.rundir import check_state_shapes


@dataclass
class LoadedRun:
    cfg: TrainConfig
    model: LanguageModel
    tokenizer: Any
    step: int
    checkpoint: Path


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder (newest good checkpoint) or one checkpoint folder inside it.

    The config is the one stored in the checkpoint (the run's ``config.yaml`` only for
    checkpoints written before they stored one); a checkpoint that does not fit its config is
    refused with the tensors that differ.
    """
    from nestlearn.data import get_tokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a run folder made by `nestlearn train`"
        )
    if (path / "meta.json").is_file():
        run_dir, ckpt = path.parent.parent, load_checkpoint(path)
    else:
        run_dir, ckpt = path, load_latest(path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"{path} holds no checkpoint (looked in {path / 'checkpoints'})")
    cfg_path = run_dir / "config.yaml"
    if ckpt.config is not None:
        cfg, source = from_dict(TrainConfig, ckpt.config), ckpt.path / "config.yaml"
    else:
        cfg, source = from_dict(TrainConfig, load_run_config(cfg_path)), cfg_path
    model = build_model(cfg.model, device=device)
    check_state_shapes(model.state_dict(), ckpt, f"Was {source} changed after training?")
    missing, unexpected = model.load_state_dict(ckpt.model, strict=False)
    missing = [k for k in missing if not (k == "head.weight" and cfg.model.tie_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt.path} does not match {source} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.eval()
    return LoadedRun(cfg, model, get_tokenizer(cfg.data.tokenizer), ckpt.step, ckpt.path)
