"""The deep optimizers inside the real trainer: ``optim.name=...`` overrides, learning, and a
bit-identical resume through the trainer's safetensors checkpoints."""

from __future__ import annotations

import pytest

from nestlearn.train import Trainer, resolve_config

BASE = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "train.progress=false",
    "train.eval_tokens=512",
    "train.eval_every=0",
    "train.ckpt_every=0",
    "schedule.warmup_steps=2",
    "train.threads=1",
    "train.steps=8",
    "optim.m3_slow_every=3",
    "optim.dmgd_hidden=4",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.name=m3", "optim.m3_alpha=0.5"],
        [
            "optim.name=deep-momentum",
            "optim.matrix_lr=0.3",
            "optim.dmgd_objective=l2",
            "optim.dmgd_inner_lr=0.1",
            "optim.momentum=0.9",
        ],
        ["optim.name=delta-gd", "optim.matrix_lr=0.05"],
        ["optim.name=delta-momentum", "optim.matrix_lr=0.01"],
    ],
)
def test_resume_through_trainer_checkpoint_is_bit_identical(overrides, tiny_data, tmp_path):
    cfg = lambda: resolve_config("transformer-tiny", None, BASE + overrides)  # noqa: E731
    full = Trainer(cfg(), run_dir=tmp_path / "full", data=tiny_data).fit()

    def stop_at_5(trainer, step, loss):
        if step == 5:
            trainer.request_stop()

    part = Trainer(cfg(), run_dir=tmp_path / "cut", data=tiny_data, on_step_end=stop_at_5).fit()
    assert part.interrupted and part.steps == 5
    rest = Trainer(cfg(), run_dir=tmp_path / "cut", data=tiny_data, resume=True).fit()
    assert part.losses + rest.losses == full.losses
    assert max(full.losses[-2:]) < full.losses[0] - 0.1  # it learns
