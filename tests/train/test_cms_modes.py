"""CMS ``objective=ntp`` and ``mode=outer`` through the training loops (docs/cms.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory.cms import ContinuumMemory
from nestlearn.models import frozen_memory
from nestlearn.train import Trainer, resolve_config
from nestlearn.train.batches import batch_starts, make_batch

BASE = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.max_seq_len=16",
    "data.seq_len=16",
    "data.batch_size=2",
    "train.eval_every=0",
    "train.ckpt_every=0",
    "train.eval_tokens=64",
    "train.progress=false",
    "train.threads=1",
    "schedule.warmup_steps=1",
]


def _cfg(*extra: str):
    return resolve_config("hope-attention-tiny", None, BASE + list(extra))


def _cms(trainer: Trainer) -> ContinuumMemory:
    return trainer.model.blocks[0].ffn


def test_trainer_steps_on_the_exact_next_token_updates(tiny_data, tmp_path):
    """The first step's loss is the driver's loss on that batch, not the frozen CMS's."""
    cms = ["model.mixer.cms.objective=ntp", "model.mixer.cms.periods=[2,4]",
           "model.mixer.cms.lr=2.0", "model.mixer.cms.learn_lr=false"]  # fmt: skip
    tr = Trainer(_cfg("train.steps=1", *cms), run_dir=tmp_path, data=tiny_data)
    T, B = 16, 2
    x, y = make_batch(tr.train_data, batch_starts(len(tr.train_data), T, B, 0, 0), T)
    with torch.no_grad():
        logits, _ = tr.model(x)
        want = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item()
        with frozen_memory(tr.model):
            logits, _ = tr.model(x)
        frozen = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item()
    assert abs(want - frozen) > 1e-3, (want, frozen)
    res = tr.fit()
    assert res.losses[0] == pytest.approx(want, abs=1e-5)


def test_trainer_refuses_activation_checkpointing_with_ntp(tiny_data, tmp_path):
    cfg = _cfg("train.steps=1", "model.mixer.cms.objective=ntp",
               "train.activation_checkpointing=true")  # fmt: skip
    with pytest.raises(ValueError, match="cms.objective=next"):
        Trainer(cfg, run_dir=tmp_path, data=tiny_data)


OUTER = ["model.mixer.cms.mode=outer", "model.mixer.cms.periods=[2,4,6]"]  # every (1, 2, 3)


def _snap(cms: ContinuumMemory) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in lvl.parameters()] for lvl in cms.levels]


def test_trainer_updates_each_outer_level_every_k_steps(tiny_data, tmp_path):
    tr = Trainer(_cfg("train.steps=6", *OUTER), run_dir=tmp_path, data=tiny_data)
    every = _cms(tr).cfg.every()
    assert every == (1, 2, 3)
    snaps = [_snap(_cms(tr))]
    tr.on_step_end = lambda t, step, loss: snaps.append(_snap(_cms(t)))
    tr.fit()
    assert int(_cms(tr).outer_count) == 6
    for step in range(1, 7):
        for lvl, k in enumerate(every):
            changed = any(
                not torch.equal(a, b) for a, b in zip(snaps[step][lvl], snaps[step - 1][lvl])
            )
            assert changed == (step % k == 0), (step, lvl)


def test_trainer_resume_mid_outer_window_is_bit_identical(tiny_data, tmp_path):
    steps = ["train.steps=7", *OUTER]
    full = Trainer(_cfg(*steps), run_dir=tmp_path / "full", data=tiny_data)
    full.fit()

    def stop_at_5(trainer, step, loss):  # 5 % 2 and 5 % 3 != 0: both slow levels mid-window
        if step == 5:
            trainer.request_stop()

    part = Trainer(_cfg(*steps), run_dir=tmp_path / "part", data=tiny_data, on_step_end=stop_at_5)
    assert part.fit().interrupted
    assert int(_cms(part).outer_count) == 5
    assert _cms(part).levels[1].acc_w_down_weight.abs().sum() > 0  # a window is open
    again = Trainer(_cfg(*steps), run_dir=tmp_path / "part", data=tiny_data, resume=True)
    again.fit()
    for (name, a), b in zip(again.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_recall_fit_attaches_the_outer_schedule():
    from nestlearn.studies.recall import RecipeConfig, fit, recipe_model

    cfg = RecipeConfig(family="hope-attention", dim=32, n_layers=1, steps=4, batch_size=2,
                       mixer={"cms": {"mode": "outer", "periods": [2, 4]}})  # fmt: skip
    model = recipe_model(cfg, vocab_size=16, max_seq_len=8)
    cms = model.blocks[0].ffn
    before = _snap(cms)
    idx = torch.randint(0, 16, (2, 8))

    def loss_fn(x):
        logits, _ = model(x)
        return F.cross_entropy(logits.flatten(0, 1), x.flatten())

    fit(model, iter([(idx,)] * 4), loss_fn, cfg)
    assert int(cms.outer_count) == 4
    assert not torch.equal(before[1][0], cms.levels[1].w_gate.weight)


def _functions_building_optimizers() -> list[tuple[str, str, bool]]:
    """(file, function, calls attach_outer_schedule) for every function of the package that
    builds an optimizer (``build_optimizer``, ``make_optimizer``, ``torch.optim.X``);
    ``nestlearn.train.loop.prepare_optimizer`` attaches it for its callers."""
    pkg = Path(__file__).resolve().parents[2] / "src" / "nestlearn"
    found = []
    for path in sorted(pkg.rglob("*.py")):
        if "optim" in path.relative_to(pkg).parts[:1]:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            names = {ast.unparse(c.func) for c in ast.walk(fn) if isinstance(c, ast.Call)}
            builds = any(
                n in ("build_optimizer", "make_optimizer") or n.startswith("torch.optim.")
                for n in names
            )
            if builds and fn.name != "make_optimizer":
                attaches = bool(names & {"attach_outer_schedule", "prepare_optimizer"})
                found.append((path.name, fn.name, attaches))
    return found


def test_every_training_loop_attaches_the_outer_schedule():
    found = _functions_building_optimizers()
    assert len(found) >= 5, found  # trainer, recall.fit, domains, EWC, bench
    missing = [f"{f}:{fn}" for f, fn, ok in found if not ok]
    assert not missing, f"these build an optimizer without attach_outer_schedule: {missing}"


def test_nested_overrides_leave_the_preset_untouched():
    """``model.mixer.cms.objective=ntp`` on a preset with a ``mixer`` mapping once edited the
    registered preset, so every later config of that preset in the process inherited it."""
    from nestlearn.models import PRESETS

    before = repr(PRESETS["hope-tiny"])
    assert (
        resolve_config("hope-tiny", None, ["model.mixer.cms.objective=ntp"]).model.mixer["cms"][
            "objective"
        ]
        == "ntp"
    )
    assert repr(PRESETS["hope-tiny"]) == before
    assert "objective" not in resolve_config("hope-tiny", None, []).model.mixer["cms"]
