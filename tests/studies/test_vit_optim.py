"""``nestlearn vit-optim``: the ViT, one training cell, the learning-rate choice, resume, the
timing and the command end to end (the Fig. 11 / Fig. 12 analogue, docs/optimizers.md)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from nestlearn.cli import main  # noqa: E402
from nestlearn.studies.vit_optim import (  # noqa: E402
    CellStore,
    StudySettings,
    TinyViT,
    TrainSettings,
    ViTConfig,
    digits_tensors,
    make_optimizer,
    run_study,
    select_lr,
    time_optimizer_steps,
    train_cell,
)
from nestlearn.studies.vit_optim import study as study_mod  # noqa: E402
from nestlearn.studies.vit_optim.train import batch_order, lr_factor  # noqa: E402

TINY_VIT = ViTConfig(dim=16, depth=1, heads=2)
TINY = TrainSettings(vit=TINY_VIT, steps=6, batch_size=16, eval_every=3, warmup=1)


@pytest.fixture(scope="module")
def digits():
    return digits_tensors(seed=0)


# --- the model ------------------------------------------------------------------------------
def test_vit_shapes_first_loss_and_seeded_init(digits) -> None:
    m = TinyViT(ViTConfig()).init_weights(0)
    logits = m(digits.x_train[:5])
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    # the classifier starts at zero: the first loss is exactly ln 10
    loss = torch.nn.functional.cross_entropy(logits, digits.y_train[:5])
    assert loss.item() == pytest.approx(math.log(10), abs=1e-6)
    same, other = TinyViT(ViTConfig()).init_weights(0), TinyViT(ViTConfig()).init_weights(1)
    sd, sd_same, sd_other = m.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_same[k]) for k in sd)
    assert not torch.equal(sd["blocks.0.attn.wq.weight"], sd_other["blocks.0.attn.wq.weight"])


def test_patches_are_row_major_blocks() -> None:
    cfg = ViTConfig(patch=2, dim=4, heads=1, pool="mean")
    m = TinyViT(cfg).init_weights(0)
    with torch.no_grad():
        m.embed.proj.weight.copy_(torch.eye(4))
        m.embed.proj.bias.zero_()
        m.embed.pos.zero_()
    img = torch.arange(64.0).view(1, 8, 8)
    tokens = m.embed(img)  # [1, 16, 4]
    assert tokens.shape == (1, 16, 4)
    # patch k = (row r, col c) of the 4 x 4 grid holds pixels (2r..2r+1, 2c..2c+1)
    for k in range(16):
        r, c = divmod(k, 4)
        assert (
            tokens[0, k].tolist() == img[0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].flatten().tolist()
        )


def test_class_token_attends_to_every_patch() -> None:
    torch.manual_seed(0)
    m = TinyViT(ViTConfig(dim=16, depth=1, heads=2)).init_weights(0)
    with torch.no_grad():
        m.head.weight.normal_()
    x = torch.randn(1, 8, 8)
    y = x.clone()
    y[0, 7, 7] += 1.0  # the last pixel, in the last patch: a causal model's first token ignores it
    assert not torch.allclose(m(x), m(y))


def test_bad_vit_configs_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"patch=3 does not divide image_size=8; use one of"):
        ViTConfig(patch=3)
    with pytest.raises(ValueError, match="heads=3 must divide dim=64"):
        ViTConfig(heads=3)
    with pytest.raises(ValueError, match="pool"):
        ViTConfig(pool="max")
    with pytest.raises(ValueError, match=r"expects images \[B, 8, 8\]"):
        TinyViT(ViTConfig()).init_weights(0)(torch.zeros(2, 64))


def test_muon_and_m3_get_the_hidden_matrices_only() -> None:
    m = TinyViT(ViTConfig(depth=2)).init_weights(0)
    names = {id(p): n for n, p in m.named_parameters()}
    for opt_name in ("muon", "m3"):
        opt = make_optimizer(m, opt_name, 1e-2, TrainSettings())
        method = sorted(names[id(p)] for g in opt.param_groups if not g.get("use_fallback")
                        for p in g["params"])  # fmt: skip
        assert method == sorted(n for n in names.values() if ".attn.w" in n or ".mlp.w_" in n)
        assert {g["lr"] for g in opt.param_groups} == {1e-2}  # fallback lr = the lr by default
    opt = make_optimizer(m, "muon", 1e-2, TrainSettings(fallback_lr=1e-3))
    assert {g["lr"] for g in opt.param_groups if g.get("use_fallback")} == {1e-3}
    with pytest.raises(ValueError, match="choose from adamw, muon, m3"):
        make_optimizer(m, "sgd", 1e-2, TrainSettings())


# --- one cell ---------------------------------------------------------------------------------
def test_schedule_and_batches() -> None:
    s = TrainSettings(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, s) == pytest.approx(0.1) and lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(99, s) == pytest.approx(0.1)
    assert all(lr_factor(i, s) >= lr_factor(i + 1, s) for i in range(10, 99))
    order = batch_order(10, steps=7, batch_size=3, seed=0)  # 21 draws: two epochs and one more
    assert order.shape == (7, 3)
    flat = order.flatten().tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert torch.equal(order, batch_order(10, 7, 3, seed=0))


@pytest.mark.parametrize("name, lr", [("adamw", 3e-3), ("muon", 1e-2), ("m3", 1e-2)])
def test_a_short_run_lowers_the_training_loss(digits, name: str, lr: float) -> None:
    s = replace(TINY, vit=ViTConfig(patch=4, dim=32, depth=1, heads=2), steps=40, eval_every=10,
                warmup=2)  # fmt: skip
    res = train_cell(digits, name, lr, 0, s)
    curve = res["curve"]
    assert curve["step"] == [10, 20, 30, 40] and res["diverged"] is None
    assert curve["train_loss"][-1] < 0.8 * curve["train_loss"][0] < 0.8 * math.log(10)
    assert res["final"]["train_loss"] < 0.8 * math.log(10)
    assert res["final"]["test_acc"] > 0.3  # well above chance (0.1) after 40 small steps
    # the same cell trained again is the same numbers (seeded init and batch order)
    again = train_cell(digits, name, lr, 0, replace(s, steps=10))
    first = train_cell(digits, name, lr, 0, replace(s, steps=10))
    assert again["curve"] == first["curve"]


def test_a_diverging_run_is_marked_and_scores_inf(digits) -> None:
    res = train_cell(digits, "muon", 1e7, 0, replace(TINY, steps=8, warmup=0))
    assert res["diverged"] is not None
    assert res["final"]["val_loss"] == math.inf and res["final"]["test_acc"] == 0.0


# --- choosing the learning rate -----------------------------------------------------------------
def test_select_lr_hand_made_cases() -> None:
    assert select_lr({1e-3: 0.5, 3e-3: 0.3, 1e-2: 0.4}) == (3e-3, False)
    assert select_lr({1e-3: 0.5, 3e-3: 0.3, 1e-2: math.inf}) == (3e-3, False)
    assert select_lr({1e-3: 0.2, 3e-3: 0.3, 1e-2: 0.4}) == (1e-3, True)  # edge: widen the grid
    assert select_lr({1e-3: 0.5, 3e-3: 0.3, 1e-2: math.nan, 3e-2: 0.1}) == (3e-2, True)
    assert select_lr({1e-3: 0.3, 3e-3: 0.3}) == (1e-3, True)  # a tie goes to the smaller lr
    assert select_lr({1e-3: 0.3}) == (1e-3, False)
    with pytest.raises(ValueError, match="every learning rate diverged.*smaller"):
        select_lr({1e-2: math.inf, 3e-2: math.nan})


# --- the study: resume ------------------------------------------------------------------------------
def _settings(**kw) -> StudySettings:
    base = dict(train=TINY, optimizers=("adamw", "muon"), grids={"adamw": (1e-3, 1e-2),
                "muon": (1e-2, 3e-2)}, seeds=2, timing_widths=(16,), timing_steps=2)  # fmt: skip
    base.update(kw)
    return StudySettings(**base)


def test_resume_reuses_finished_cells_and_redoes_broken_ones(tmp_path: Path, monkeypatch) -> None:
    trained: list[tuple[str, float, int]] = []
    real = study_mod.train_cell

    def counting(data, name, lr, seed, s):  # noqa: ANN001
        trained.append((name, lr, seed))
        return real(data, name, lr, seed, s)

    monkeypatch.setattr(study_mod, "train_cell", counting)
    s = _settings()
    first = run_study(s, tmp_path)
    assert len(trained) == 2 * (2 + 1)  # per optimizer: 2 grid lrs + 1 more seed
    assert {"results.json", "results.md", "curves.png", "timing.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    store = CellStore(tmp_path)
    assert len(list(store.dir.glob("*.json"))) == 6

    trained.clear()
    again = run_study(s, tmp_path)
    assert trained == [] and again == json.loads(json.dumps(first))

    # a cell killed before its file was renamed leaves only a temporary file; another file is
    # truncated; a third is deleted: exactly those are trained again, the rest reused
    chosen = first["optimizers"]["muon"]["lr"]
    killed = store.path("muon", chosen, 1)
    killed.rename(killed.with_name(f".{killed.name}.tmp-123"))
    damaged = store.path("adamw", 1e-3, 0)
    damaged.write_text(damaged.read_text()[:200])
    store.path("adamw", 1e-2, 0).unlink()
    trained.clear()
    run_study(s, tmp_path)
    assert sorted(trained) == sorted([("muon", chosen, 1), ("adamw", 1e-3, 0), ("adamw", 1e-2, 0)])

    # more timed rounds: the timing is measured again, the cells are reused
    trained.clear()
    more = run_study(replace(s, timing_steps=3), tmp_path)
    assert trained == [] and more["timing"][0]["steps"] == 3 and first["timing"][0]["steps"] == 2

    # other settings: every cell is trained again (its stored plan no longer matches)
    trained.clear()
    run_study(replace(s, train=replace(TINY, steps=7)), tmp_path)
    assert len(trained) == 6
    # --rerun: trained again even though they match
    trained.clear()
    run_study(replace(s, train=replace(TINY, steps=7)), tmp_path, reuse=False)
    assert len(trained) == 6


def test_study_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="not known; choose from adamw, muon, m3"):
        StudySettings(optimizers=("adamw", "lion"))
    with pytest.raises(ValueError, match="grid is given for 'm3'.*not among"):
        StudySettings(optimizers=("adamw",), grids={"m3": (1e-3,)})
    with pytest.raises(ValueError, match="positive numbers"):
        StudySettings(grids={"adamw": (0.0,)})
    with pytest.raises(ValueError, match="timing width 30 must be a positive multiple"):
        StudySettings(timing_widths=(30,))
    with pytest.raises(ValueError, match="warmup"):
        TrainSettings(steps=10, warmup=10)


def test_timing_steps_every_optimizer_on_the_same_gradients() -> None:
    row = time_optimizer_steps(TINY_VIT, ["adamw", "muon", "m3"], TINY, steps=3, warmup=1)
    assert set(row["step_ms"]) == {"adamw", "muon", "m3"}
    assert all(v > 0 for v in row["step_ms"].values()) and row["fwd_bwd_ms"] > 0
    assert row["dim"] == 16 and row["params"] == sum(
        p.numel() for p in TinyViT(TINY_VIT).parameters()
    )


# --- the command ------------------------------------------------------------------------------
CLI_TINY = ["--steps", "6", "--batch-size", "16", "--eval-every", "3", "--dim", "16",
            "--depth", "1", "--heads", "2", "--lrs", "1e-3,1e-2", "--seeds", "2",
            "--timing-steps", "2", "--threads", "1"]  # fmt: skip


def test_command_end_to_end_and_rerun(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vit"
    assert main(["vit-optim", "--out", str(out), *CLI_TINY]) == 0
    printed = capsys.readouterr().out
    md = (out / "results.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith(("| AdamW", "| Muon", "| M3"))]
    assert [r.split("|")[1].strip() for r in rows[:3]] == ["AdamW", "Muon", "M3"]
    assert all(r.count("±") == 3 for r in rows[:3])  # train loss, test loss, accuracy
    assert "| 16 |" in md and "| 64 |" in md  # timed at --dim and 4x --dim
    res = json.loads((out / "results.json").read_text())
    for name in ("adamw", "muon", "m3"):
        o = res["optimizers"][name]
        assert o["lr"] in (1e-3, 1e-2) and len(o["runs"]) == 2
        assert [r["seed"] for r in o["runs"]] == [0, 1]
        assert o["runs"][0]["final"] != o["runs"][1]["final"]  # seeds differ
    assert (out / "curves.png").stat().st_size > 5000
    assert rows[0] in printed and "[9/9]" in printed and "wall time" in printed
    assert main(["vit-optim", "--out", str(out), *CLI_TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": reused (") == 9 and "timing: reused" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lrs", "1e-3,fast"], "--lrs must be comma-separated numbers"),
        (["--lrs-for", "m3"], "--lrs-for takes OPT=LR,LR"),
        (["--lrs-for", "sgd=1e-3"], "grid is given for 'sgd'"),
        (["--optimizers", "adamw,adam"], "not known; choose from adamw, muon, m3"),
        (["--seeds", "0"], "seeds must be >= 1"),
        (["--heads", "3"], "heads=3 must divide dim=16"),
        (["--timing-widths", "15"], "timing width 15 must be a positive multiple"),
        (["--warmup", "6"], "warmup must be in"),
        (["--m3-alpha", "-1"], "m3-alpha must be >= 0"),
        (["--steps", "0"], "steps must be >= 1"),
    ],
)
def test_command_refuses_bad_options(
    tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "bad"
    assert main(["vit-optim", "--out", str(out), *CLI_TINY, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_command_without_scikit_learn_says_how_to_install(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["vit-optim", "--out", str(tmp_path / "x"), *CLI_TINY]) == 2
    assert 'pip install "nestlearn[vision]"' in capsys.readouterr().err


def test_command_killed_mid_run_resumes(tmp_path: Path) -> None:
    """kill -9 the command while it trains: the cells written before stay and are reused, the
    cell it was training leaves no result file and is trained again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "nestlearn.cli", "vit-optim", "--out", str(out),
            "--optimizers", "adamw", "--lrs", "1e-3,3e-3,1e-2", "--seeds", "1",
            "--steps", "60", "--eval-every", "30", "--patch", "4", "--dim", "16",
            "--depth", "1", "--heads", "2", "--timing-steps", "0", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = out / "cells"
    deadline = time.monotonic() + 300
    while not any(cells.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name for p in cells.glob("*.json")}
    assert done, "no cell finished before the kill"
    if len(done) == 3:
        pytest.skip("the machine finished every cell before the kill landed")
    assert not (out / "results.md").exists()
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    reused = rerun.stdout.count(": reused (")
    assert reused == len(done) and rerun.stdout.count(" s\n") >= 3 - len(done)
    assert len(list(cells.glob("*.json"))) == 3 and (out / "results.md").exists()
