"""Open a finished or running training run: its config, model weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nestlearn.models import LanguageModel, build_model
from nestlearn.train.checkpoint import CheckpointError, load_checkpoint, load_latest
from nestlearn.train.config import ConfigError, TrainConfig, from_dict, load_yaml


@dataclass
class LoadedRun:
    cfg: TrainConfig
    model: LanguageModel
    tokenizer: Any
    step: int
    checkpoint: Path


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder (newest good checkpoint) or one checkpoint folder inside it."""
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
    if not cfg_path.is_file():
        raise ConfigError(f"{cfg_path} is missing; is {run_dir} a nestlearn run folder?")
    cfg = from_dict(TrainConfig, load_yaml(cfg_path))
    model = build_model(cfg.model, device=device)
    missing, unexpected = model.load_state_dict(ckpt.model, strict=False)
    missing = [k for k in missing if not (k == "head.weight" and cfg.model.tie_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt.path} does not match {cfg_path} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.eval()
    return LoadedRun(cfg, model, get_tokenizer(cfg.data.tokenizer), ckpt.step, ckpt.path)
