"""train.log_to: TensorBoard event files that parse, W&B offline runs, memory statistics."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from nestlearn.train import Trainer, resolve_config
from nestlearn.train.config import ConfigError
from nestlearn.train.memory_stats import memory_stats

BASE = [
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "data.batch_size=4",
    "train.progress=false",
    "train.eval_tokens=512",
    "schedule.warmup_steps=2",
    "train.threads=1",
    "train.steps=6",
    "train.eval_every=3",
    "train.ckpt_every=3",
]


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_events_exist_parse_and_match_metrics(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = resolve_config("titans-tiny", None, [*BASE, "train.log_to=jsonl,tensorboard"])
    Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ev = _events(tmp_path / "tensorboard")
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in lines if "loss" in r]
    assert [s for s, _ in ev["train/loss"]] == [s for s, _ in losses] == list(range(1, 7))
    assert [v for _, v in ev["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    for tag in ("train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/bpb"):
        assert tag in ev, sorted(ev)
    assert [s for s, _ in ev["val/loss"]] == [3, 6]
    mem = [t for t in ev if t.startswith("mem/")]
    assert any(t.endswith("/norm") for t in mem) and any("step_at_bias" in t for t in mem), mem


def test_resumed_run_keeps_one_tensorboard_history(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    over = [*BASE, "train.log_to=jsonl,tensorboard", "train.memory_stats=false"]

    def stop_at_4(trainer, step, loss):
        if step == 4:
            trainer.request_stop()

    Trainer(resolve_config("transformer-tiny", None, over), run_dir=tmp_path, data=tiny_data,
            on_step_end=stop_at_4).fit()  # fmt: skip
    Trainer(resolve_config("transformer-tiny", None, over), run_dir=tmp_path, data=tiny_data,
            resume=True).fit()  # fmt: skip
    steps = [s for s, _ in _events(tmp_path / "tensorboard")["train/loss"]]
    assert steps == list(range(1, 7))  # steps after the step-3 checkpoint are not doubled


def test_wandb_offline_run_is_written(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = resolve_config("transformer-tiny", None, [*BASE, "train.log_to=jsonl,wandb"])
    Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    deadline = time.monotonic() + 60  # W&B's service process finishes the file just after
    while time.monotonic() < deadline:
        blob = runs[0].read_bytes()
        if b"val/bpb" in blob:
            break
        time.sleep(0.2)
    assert b"train/loss" in blob and b"val/bpb" in blob
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert run_id in runs[0].name


def test_log_to_options_are_checked(monkeypatch, tiny_data, tmp_path):
    for bad, match in [
        ("train.log_to=jsonl,mlflow", "unknown target 'mlflow'"),
        ("train.log_to=tensorboard", "must include jsonl"),
        ("train.wandb_mode=offline", "no effect without wandb"),
        ("train.wandb_mode=sometimes", "wandb_mode must be"),
        ("data.doc_boundary=never", "doc_boundary must be eos or reset"),
    ]:
        with pytest.raises(ConfigError, match=match):
            resolve_config("transformer-tiny", None, [bad])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = resolve_config("transformer-tiny", None, [*BASE, "train.log_to=jsonl,wandb"])
    with pytest.raises(ValueError, match=r'pip install "nestlearn\[tracking\]"'):
        Trainer(cfg, run_dir=tmp_path, data=tiny_data)


@pytest.mark.parametrize(
    "preset, expect",
    [
        ("titans-tiny", ["L0.mixer.inner.weights/norm", "L0.mixer/step_at_bias"]),
        ("hope-tiny", ["L0.mixer.inner.memory.weights/update", "L0.ffn/lr.0", "L1.ffn/lr.2"]),
        ("hope-attention-tiny", ["L0.ffn.levels.0.delta/norm", "L1.ffn/lr.1"]),
        ("titans-mac-tiny", ["L1.mixer.memory.inner.weights/norm"]),
        ("transformer-tiny", []),
    ],
)
def test_memory_stats_for_each_family(preset, expect):
    from nestlearn.models import build_model

    cfg = resolve_config(preset, None, ["model.dim=64", "model.n_layers=2", "model.n_heads=2"])
    cfg.model.vocab_size = 64
    model = build_model(cfg.model, seed=0)
    x = torch.randint(0, 64, (1, 256))
    stats = memory_stats(model, x)
    assert model.training  # left as it was
    if not expect:
        assert stats == {}
        return
    for key in expect:
        assert f"mem/{key}" in stats, sorted(stats)
    norms = {k: v for k, v in stats.items() if k.endswith("/update")}
    assert norms and all(v > 0 for v in norms.values()), norms  # the memory is written


def test_force_drops_the_replaced_runs_tracker_files(tiny_data, tmp_path):
    """A --force run neither mixes TensorBoard events with the old run's nor continues its W&B
    run (a reused wandb_id would make the new run's steps look like replays); resuming a
    finished run writes nothing, tracker files included."""
    pytest.importorskip("tensorboard")
    over = [*BASE, "train.log_to=jsonl,tensorboard", "train.memory_stats=false"]
    Trainer(resolve_config("transformer-tiny", None, over), run_dir=tmp_path, data=tiny_data).fit()
    (tmp_path / "wandb_id").write_text("oldrun\n")
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "offline-run-old").write_text("not synced yet")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    Trainer(resolve_config("transformer-tiny", None, over), run_dir=tmp_path, data=tiny_data,
            resume=True).fit()  # fmt: skip
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    over2 = [*over, "train.steps=4"]
    Trainer(resolve_config("transformer-tiny", None, over2), run_dir=tmp_path, data=tiny_data,
            force=True).fit()  # fmt: skip
    assert not (tmp_path / "wandb_id").exists()
    assert (tmp_path / "wandb" / "offline-run-old").read_text() == "not synced yet"  # kept
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    steps = [s for s, _ in _events(tmp_path / "tensorboard")["train/loss"]]
    assert steps == [1, 2, 3, 4]  # the new run's only
