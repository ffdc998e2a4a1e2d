"""Trainer behaviour: learning, exact resume, checkpoints, config errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from nestlearn.train import Trainer, resolve_config
from nestlearn.train.checkpoint import CheckpointError, list_checkpoints, load_latest
from nestlearn.train.config import ConfigError
from nestlearn.train.schedule import lr_factor

BASE = [
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "data.batch_size=8",
    "train.progress=false",
    "train.eval_tokens=2048",
    "schedule.warmup_steps=5",
    "train.threads=1",
]


def _cfg(*extra: str):
    return resolve_config("transformer-tiny", None, BASE + list(extra))


def test_loss_falls_over_50_steps(tiny_data, tmp_path):
    cfg = _cfg("train.steps=50", "train.eval_every=25", "optim.lr=3e-3")
    res = Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    assert len(res.losses) == 50
    assert abs(res.losses[0] - math.log(256)) < 0.15
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first - 1.5, (first, last)
    assert res.final_eval["loss"] < first - 1.0
    assert res.final_eval["bpb"] == pytest.approx(res.final_eval["loss"] / math.log(2), rel=1e-9)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 51))
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in steps)
    assert sum("val_loss" in r for r in lines) == 2  # step 25 and the end
    assert (tmp_path / "config.yaml").is_file()


def test_interrupted_and_resumed_run_is_bit_identical(tiny_data, tmp_path):
    steps = ["train.steps=16", "train.ckpt_every=0", "train.eval_every=0"]
    full = Trainer(_cfg(*steps), run_dir=tmp_path / "full", data=tiny_data).fit()

    def stop_at_7(trainer, step, loss):
        if step == 7:
            trainer.request_stop()

    part = Trainer(
        _cfg(*steps), run_dir=tmp_path / "cut", data=tiny_data, on_step_end=stop_at_7
    ).fit()
    assert part.interrupted and part.steps == 7
    rest = Trainer(_cfg(*steps), run_dir=tmp_path / "cut", data=tiny_data, resume=True).fit()
    assert rest.steps == 16 and not rest.interrupted
    assert part.losses + rest.losses == full.losses  # bit for bit
    a = Trainer(_cfg(*steps), run_dir=tmp_path / "full", data=tiny_data, resume=True).model
    b = Trainer(_cfg(*steps), run_dir=tmp_path / "cut", data=tiny_data, resume=True).model
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_grad_accumulation_matches_full_batch(tiny_data, tmp_path):
    one = Trainer(
        _cfg("train.steps=3", "train.eval_every=0"), run_dir=tmp_path / "a", data=tiny_data
    ).fit()
    acc = Trainer(
        _cfg("train.steps=3", "train.eval_every=0", "train.grad_accum=4"),
        run_dir=tmp_path / "b",
        data=tiny_data,
    ).fit()
    assert one.losses == pytest.approx(acc.losses, abs=1e-5)


def test_corrupted_checkpoint_falls_back_to_previous(tiny_data, tmp_path):
    cfg = _cfg("train.steps=6", "train.ckpt_every=2", "train.keep_last=3", "train.eval_every=0")
    Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004", "step_00000006"]
    blob = ckpts[-1] / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    ckpt = load_latest(tmp_path / "checkpoints")
    assert ckpt.step == 4
    resumed = Trainer(cfg, run_dir=tmp_path, data=tiny_data, resume=True)
    assert resumed.start_step == 4
    for p in ckpts[:-1]:
        (p / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_latest(tmp_path / "checkpoints")


def test_keep_last_prunes_and_no_temp_left(tiny_data, tmp_path):
    cfg = _cfg("train.steps=6", "train.ckpt_every=1", "train.keep_last=2", "train.eval_every=0")
    Trainer(cfg, run_dir=tmp_path, data=tiny_data).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000005", "step_00000006"]


def test_checkpoint_holds_no_pickle(tiny_data, tmp_path):
    Trainer(_cfg("train.steps=2", "train.eval_every=0"), run_dir=tmp_path, data=tiny_data).fit()
    (ckpt,) = list_checkpoints(tmp_path / "checkpoints")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.yaml",
        "meta.json",
        "model.safetensors",
        "optim.safetensors",
    ]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert sorted(meta["sha256"]) == ["config.yaml", "model.safetensors", "optim.safetensors"]


def test_schedule_warmup_then_cosine():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lrr=1", "did you mean optim.lr"),
        ("train.steps=ten", "train.steps: expected an integer"),
        ("model.dim=99", "divisible by model.n_heads"),
        ("data.batch_size=0", "data.batch_size must be positive"),
        ("train.dtype=fp8", "train.dtype must be"),
        ("nosuchsection.x=1", "unknown config key nosuchsection"),
        ("optim.lr", "must look like key.sub=value"),
    ],
)
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(override)


def test_batch_not_divisible_by_accumulation(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="must be divisible"):
        Trainer(_cfg("train.grad_accum=3"), run_dir=tmp_path, data=tiny_data)


def test_seq_len_beyond_data_is_a_clear_error(tmp_path):
    from nestlearn.train.batches import ArrayTokens
    from tests.conftest import ByteTok

    data = (ByteTok(), ArrayTokens(list(range(40))), ArrayTokens(list(range(40))))
    with pytest.raises(ValueError, match="fewer than data.seq_len"):
        Trainer(_cfg("train.steps=1"), run_dir=tmp_path, data=data).fit()


def test_bf16_autocast_on_cpu_trains(tiny_data, tmp_path):
    res = Trainer(
        _cfg("train.steps=8", "train.eval_every=0", "train.dtype=bfloat16", "optim.lr=3e-3"),
        run_dir=tmp_path,
        data=tiny_data,
    ).fit()
    assert all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] < res.losses[0] - 0.3


@pytest.mark.slow
def test_compiled_blocks_match_eager(tiny_data, tmp_path):
    eager = Trainer(
        _cfg("train.steps=3", "train.eval_every=0"), run_dir=tmp_path / "e", data=tiny_data
    ).fit()
    comp = Trainer(
        _cfg("train.steps=3", "train.eval_every=0", "train.compile=true"),
        run_dir=tmp_path / "c",
        data=tiny_data,
    ).fit()
    assert comp.losses == pytest.approx(eager.losses, abs=1e-4)


def test_activation_checkpointing_matches_and_keeps_less(tiny_data, tmp_path):
    """train.activation_checkpointing recomputes blocks in the backward pass: the same losses as
    without it, and far fewer bytes saved for backward during the forward pass (hope's in-context
    CMS keeps per-chunk fast weights, the case the option exists for)."""
    plain = Trainer(_cfg("train.steps=3", "train.eval_every=0"), run_dir=tmp_path / "a",
                    data=tiny_data).fit()  # fmt: skip
    ck = Trainer(
        _cfg("train.steps=3", "train.eval_every=0", "train.activation_checkpointing=true"),
        run_dir=tmp_path / "b", data=tiny_data,
    )  # fmt: skip
    assert ck.model.activation_checkpointing
    assert ck.fit().losses == pytest.approx(plain.losses, abs=1e-6)

    from nestlearn.models import build_model, preset_config

    cfg = preset_config("hope-tiny")
    cfg = dataclasses.replace(cfg, vocab_size=64, dim=64, n_heads=2, n_layers=2)
    model = build_model(cfg, device=torch.device("cpu"), seed=0)
    idx = torch.randint(0, 64, (2, 96), generator=torch.Generator().manual_seed(0))

    def run(on: bool):
        model.set_activation_checkpointing(on)
        model.zero_grad(set_to_none=True)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits, _ = model(idx)
            loss = logits.logsumexp(-1).mean()
        loss.backward()
        return saved[0], loss.detach(), [p.grad.clone() for p in model.parameters()]

    kept_plain, loss_a, ga = run(False)
    kept_ck, loss_b, gb = run(True)
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert kept_ck < kept_plain / 5, (kept_ck, kept_plain)
