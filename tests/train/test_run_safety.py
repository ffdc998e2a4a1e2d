"""A run is never lost or mixed with another, and never reports a wrong number.

Run-folder claims, resume from the checkpoint's own config, metrics trimmed on every resume,
finished runs left alone, half-written leftovers tidied, divergence and dead-model stops,
write errors, and hyper-parameter overrides that act on resume.
"""

from __future__ import annotations

import errno
import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nestlearn.train import Trainer, TrainingStopped, resolve_config
from nestlearn.train.batches import ArrayTokens
from nestlearn.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    list_checkpoints,
    load_latest,
)
from nestlearn.train.config import ConfigError
from nestlearn.train.rundir import RunExistsError, resume_config
from tests.conftest import ByteTok

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
    "schedule.warmup_steps=2",
    "train.threads=1",
]


def _cfg(*extra: str):
    return resolve_config("transformer-tiny", None, BASE + list(extra))


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "loss" in r], [r["step"] for r in recs if "val_loss" in r]


def _stop_at(n):
    def cb(trainer, step, loss):
        if step == n:
            trainer.request_stop()

    return cb


def test_out_holding_another_run_is_refused_and_force_replaces_it(tiny_data, tmp_path):
    Trainer(_cfg("train.steps=3"), run_dir=tmp_path, data=tiny_data).fit()
    before = _snapshot(tmp_path)
    with pytest.raises(RunExistsError, match=r"already holds a run .*--resume.*--force"):
        Trainer(_cfg("train.steps=5", "optim.lr=1e-2"), run_dir=tmp_path, data=tiny_data)
    assert _snapshot(tmp_path) == before  # nothing overwritten
    (tmp_path / "notes.txt").write_text("mine")
    res = Trainer(_cfg("train.steps=5"), run_dir=tmp_path, data=tiny_data, force=True).fit()
    assert res.steps == 5
    assert _steps(tmp_path)[0] == [1, 2, 3, 4, 5]  # one run's records, each step once
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000005"]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # --force touches only the run's files
    with pytest.raises(RunExistsError, match="is a file"):
        Trainer(_cfg(), run_dir=tmp_path / "notes.txt", data=tiny_data)


def test_resuming_a_finished_run_changes_nothing(tiny_data, tmp_path):
    Trainer(_cfg("train.steps=4", "train.eval_every=2"), run_dir=tmp_path, data=tiny_data).fit()
    before = _snapshot(tmp_path)
    for over in ([], ["train.steps=3"]):  # at or beyond train.steps
        cfg, ckpt = resume_config(tmp_path, over)
        trainer = Trainer(cfg, run_dir=tmp_path, resume=True, checkpoint=ckpt, data=tiny_data)
        res = trainer.fit()
        assert trainer.finished and res.already_finished and res.losses == []
        assert _snapshot(tmp_path) == before
    assert _steps(tmp_path) == ([1, 2, 3, 4], [2, 4])


def test_resume_takes_the_checkpoint_config_over_a_damaged_config_yaml(tiny_data, tmp_path, caplog):
    full = Trainer(_cfg("train.steps=6"), run_dir=tmp_path / "full", data=tiny_data).fit()
    run = tmp_path / "cut"
    cfg = _cfg("train.steps=6", "train.ckpt_every=2")
    Trainer(cfg, run_dir=run, data=tiny_data, on_step_end=_stop_at(4)).fit()
    text = (run / "config.yaml").read_text()
    cut = text[: text.index("train:")] + "train:\n  steps: 1000\n"  # parses, wrong, truncated
    for damaged in (cut, "", text[: len(text) // 2]):
        (run / "config.yaml").write_text(damaged)
        with caplog.at_level(logging.WARNING):
            got, ckpt = resume_config(run)
        assert ckpt.step == 4 and got.train.steps == 6 and got.data.batch_size == 4
        assert "config.yaml is damaged" in caplog.text
        caplog.clear()
    rest = Trainer(got, run_dir=run, resume=True, checkpoint=ckpt, data=tiny_data).fit()
    assert rest.losses == full.losses[4:]
    # the run's config.yaml is whole again, and without a checkpoint a damaged one is an error
    assert resume_config(run)[0].train.steps == 6
    for p in list_checkpoints(run / "checkpoints"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    (run / "config.yaml").write_text(cut)
    with pytest.raises(ConfigError, match=r"config.yaml is damaged \(it ends early"):
        resume_config(run)
    (run / "config.yaml").write_text(text.replace("steps: 6", "steps: 1000"))
    with pytest.raises(ConfigError, match=r"config.yaml is damaged \(its content does not match"):
        resume_config(run)
    (run / "config.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"config.yaml is damaged \(it is empty\)"):
        resume_config(run)


def test_metrics_are_trimmed_on_every_resume(tiny_data, tmp_path):
    full = Trainer(_cfg("train.steps=5"), run_dir=tmp_path / "full", data=tiny_data).fit()
    run = tmp_path / "run"
    # a kill before the first checkpoint: metrics lines but no checkpoint
    Trainer(_cfg("train.steps=5", "train.ckpt_every=0"), run_dir=run, data=tiny_data).fit()
    for p in list_checkpoints(run / "checkpoints"):
        import shutil

        shutil.rmtree(p)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.0}\n{"step": 3, "lo')  # a torn last line
    res = Trainer(_cfg("train.steps=5"), run_dir=run, resume=True, data=tiny_data).fit()
    assert res.losses == full.losses
    assert _steps(run) == ([1, 2, 3, 4, 5], [5])


def test_half_written_leftovers_are_tidied_and_an_old_copy_restored(tiny_data, tmp_path):
    cfg = _cfg("train.steps=6", "train.ckpt_every=2", "train.keep_last=1")
    Trainer(cfg, run_dir=tmp_path, data=tiny_data, on_step_end=_stop_at(4)).fit()
    ck = tmp_path / "checkpoints"
    (ck / ".tmp-step_00000006-999").mkdir()
    (ck / ".tmp-step_00000006-999" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".config.yaml.tmp-999").write_text("half")
    # a kill between "old copy renamed aside" and "new copy renamed in": only the aside exists
    (ck / "step_00000004").rename(ck / ".old-step_00000004-999")
    trainer = Trainer(cfg, run_dir=tmp_path, resume=True, data=tiny_data)
    assert trainer.start_step == 4
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000004"]
    assert not (tmp_path / ".config.yaml.tmp-999").exists()


def test_a_damaged_newer_checkpoint_is_set_aside_and_the_run_still_matches(tiny_data, tmp_path):
    full = Trainer(_cfg("train.steps=8"), run_dir=tmp_path / "full", data=tiny_data).fit()
    run = tmp_path / "run"
    cfg = _cfg("train.steps=8", "train.ckpt_every=2", "train.keep_last=2")
    Trainer(cfg, run_dir=run, data=tiny_data, on_step_end=_stop_at(6)).fit()
    ck = run / "checkpoints"
    blob = ck / "step_00000006" / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    cfg1, ckpt = resume_config(run, ["train.keep_last=1", "train.ckpt_every=1"])
    assert ckpt.step == 4
    rest = Trainer(cfg1, run_dir=run, resume=True, checkpoint=ckpt, data=tiny_data).fit()
    assert rest.losses == full.losses[4:]
    assert sorted(p.name for p in ck.iterdir()) == ["damaged-step_00000006", "step_00000008"]
    # a folder whose meta.json names another step is refused, whatever its files hold
    (ck / "step_00000008").rename(ck / "step_00000007")
    with pytest.raises(CheckpointError, match="says step 8 but the folder is step_00000007"):
        load_latest(ck)


def test_divergence_stops_before_the_bad_update_and_keeps_the_last_good_step(tiny_data, tmp_path):
    ref = Trainer(_cfg("train.steps=3", "train.ckpt_every=1", "train.keep_last=5"),
                  run_dir=tmp_path / "ref", data=tiny_data)  # fmt: skip
    ref.fit()
    trainer = Trainer(_cfg("train.steps=8"), run_dir=tmp_path / "run", data=tiny_data)
    calls = [0]

    def poison(module, args, out):  # the forward of step 4 returns NaN logits
        calls[0] += 1
        return out * float("nan") if calls[0] == 4 else out

    trainer.model.head.register_forward_hook(poison)
    with pytest.raises(TrainingStopped, match=r"diverged at step 4: loss nan.*weights of step 3"):
        trainer.fit()
    (kept,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert kept.name == "step_00000003"
    got = load_file(kept / "model.safetensors")
    want = load_file(tmp_path / "ref" / "checkpoints" / "step_00000003" / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)  # the last good weights, bit for bit
    assert _steps(tmp_path / "run")[0] == [1, 2, 3]


def test_a_dead_model_stops_after_dead_grad_steps(tiny_data, tmp_path):
    cfg = _cfg("train.steps=40", "train.ckpt_every=2", "train.dead_grad_steps=5")
    trainer = Trainer(cfg, run_dir=tmp_path, data=tiny_data)
    calls = [0]

    def kill(module, args, out):  # from step 3 on the logits no longer depend on the weights
        calls[0] += 1
        return out * 0.0 if calls[0] >= 3 else out

    trainer.model.head.register_forward_hook(kill)
    with pytest.raises(TrainingStopped, match=r"dead: the gradient norm has been exactly 0 from "
                       r"step 3 to 7 .*newest checkpoint from before it is .*step_00000002"):  # fmt: skip
        trainer.fit()
    # no checkpoint of the dead weights was written (steps 4 and 6 fell inside the dead run)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert _steps(tmp_path)[0] == [1, 2, 3, 4, 5, 6, 7]  # every step run is logged


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(tiny_data, tmp_path, monkeypatch):
    import nestlearn.train.checkpoint as ck

    cfg = _cfg("train.steps=6", "train.ckpt_every=2", "train.keep_last=1")
    real = ck.save_file
    calls = [0]

    def full_disk(tensors, filename, *a, **k):
        calls[0] += 1
        if calls[0] >= 3:  # the 2nd checkpoint's model file
            with open(filename, "wb") as f:
                f.write(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*step_00000004: No "
                       r"space left on device .*earlier checkpoints are intact"):  # fmt: skip
        Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]
    assert load_latest(tmp_path / "checkpoints").step == 2


def test_an_optim_override_on_resume_acts(tiny_data, tmp_path):
    cfg = _cfg("train.steps=6", "train.ckpt_every=3", "schedule.warmup_steps=0")
    Trainer(cfg, run_dir=tmp_path, data=tiny_data, on_step_end=_stop_at(3)).fit()
    cfg2, ckpt = resume_config(tmp_path, ["optim.lr=1e-5"])
    trainer = Trainer(cfg2, run_dir=tmp_path, resume=True, checkpoint=ckpt, data=tiny_data)
    assert all(g["initial_lr"] == 1e-5 for g in trainer.optimizer.param_groups)
    trainer.fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in recs if "lr" in r}
    assert lrs[4] < 1e-5 < lrs[3]


def test_shape_changing_override_on_resume_is_refused(tiny_data, tmp_path):
    Trainer(_cfg("train.steps=2"), run_dir=tmp_path, data=tiny_data).fit()
    before = _snapshot(tmp_path)
    cfg, ckpt = resume_config(tmp_path, ["model.dim=64", "train.steps=4"])
    with pytest.raises(ConfigError, match=r"does not fit this model: .* is \[128, 32\] in the "
                       r"checkpoint, \[192, 64\] here.*cannot change the shape"):  # fmt: skip
        Trainer(cfg, run_dir=tmp_path, resume=True, checkpoint=ckpt, data=tiny_data)
    assert _snapshot(tmp_path) == before


def test_out_of_vocabulary_ids_are_refused(tmp_path):
    arr = np.arange(5000) % 300  # ids up to 299 for a 256-id model
    data = (ByteTok(), ArrayTokens(arr), ArrayTokens(arr[:500]))
    with pytest.raises(
        ValueError, match=r"token id 2\d\d is outside the model's vocabulary \[0, 256\)"
    ):
        Trainer(_cfg("train.steps=2"), run_dir=tmp_path, data=data).fit()
    from nestlearn.train.validation import evaluate_lm

    model = Trainer(
        _cfg(), run_dir=tmp_path / "b", data=(ByteTok(),) + (ArrayTokens(arr % 256),) * 2
    ).model
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        evaluate_lm(model, ArrayTokens(arr), seq_len=32, batch_size=2, max_tokens=1000)
    with pytest.raises(ValueError, match=r"token id 999 is outside this model's vocabulary"):
        model(torch.tensor([[1, 999]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="no token was scored"):
        evaluate_lm(model, ArrayTokens(arr[:20] % 256), seq_len=32, batch_size=2, max_tokens=100)
    assert math.isfinite(
        evaluate_lm(model, ArrayTokens(arr % 256), seq_len=32, batch_size=2, max_tokens=64)["loss"]
    )
