"""``nestlearn.nested``: the docs' worked example runs (<= 15 lines), trains with ``nestlearn
train`` and benchmarks with ``nestlearn bench``; the known-models table in docs/nested.md is the
generated one; ``register_memory`` adds a family that trains."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from nestlearn.cli import main
from nestlearn.models import FAMILIES, PRESETS, build_model, preset_config
from nestlearn.models.families.miras import SPECS
from nestlearn.models.registry import PRESET_NOTES
from nestlearn.nested import MemorySpec, bench_name, known_table, recipe, register_memory

DOC = Path(__file__).resolve().parents[1] / "docs" / "nested.md"
SMALL = [
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.ffn_hidden=64",
    "data.seq_len=32", "model.max_seq_len=32", "data.batch_size=2", "train.eval_tokens=512",
    "train.progress=false", "schedule.warmup_steps=1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _doc_block(after: str, lang: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    tail = text[text.index(after) :]
    m = re.search(rf"```{lang}\n(.*?)```", tail, re.S)
    assert m, f"no ```{lang} block after {after!r}"
    return m.group(1)


def test_known_table_in_the_docs_is_the_generated_one() -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- known-table:start -->\n(.*?)\n<!-- known-table:end -->", text, re.S)
    assert m and m.group(1).strip() == known_table().strip()


def test_worked_example_defines_trains_and_benchmarks(tmp_path, monkeypatch, capsys) -> None:
    code = _doc_block("## Worked example", "python")
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) <= 15, len(lines)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})  # writes my_memory.yaml, prints the bench name
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    spec = MemorySpec(memory="mlp", activation="gelu", objective="huber", retention="l2",
                      algorithm="gd", momentum=True, chunk_size=16)  # fmt: skip
    assert printed == bench_name(spec)
    cfg = yaml.safe_load((tmp_path / "my_memory.yaml").read_text())
    assert cfg["model"]["mixer"] == {"activation": "gelu", "objective": "huber", "momentum": True}
    # the shell commands of the docs, with overrides that keep the test small
    shell = _doc_block("Then, from the shell", "bash").splitlines()
    train = shell[0].split()
    assert train[:4] == ["nestlearn", "train", "--config", "my_memory.yaml"]
    run = tmp_path / "run"
    assert main(["train", "--config", "my_memory.yaml", "--out", str(run), "train.steps=3",
                 *SMALL]) == 0  # fmt: skip
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["family"] == "nested"
    assert saved["model"]["mixer"]["objective"] == "huber"
    assert f'--model "{printed}"' in shell[1]
    capsys.readouterr()
    assert main(["bench", "--model", printed, "--model", "titans", "--dim", "32", "--layers", "1",
                 "--seq", "32", "--batch", "1", "--steps", "1", "--warmup", "0",
                 "--decode-context", "0", "--json"]) == 0  # fmt: skip
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert [r["family"] for r in recs] == ["nested", "titans"]
    assert recs[0]["train_tokens_per_s"] > 0


def test_recipe_matches_hope_tiny_size() -> None:
    spec = MemorySpec(objective="lp", retention="lq", read="before", norm="layernorm")
    data = recipe(spec, steps=10)
    cfg = preset_config("nested-demo", vocab_size=259, **data["model"])
    n = build_model(cfg, meta=True).num_params()
    assert abs(n / 3_330_876 - 1) < 0.02, n


def test_register_memory_adds_a_family_that_learns(tiny_data) -> None:
    spec = MemorySpec(memory="matrix", objective="huber", retention="l2", momentum=True,
                      chunk_size=8)  # fmt: skip
    name = "test-huber-matrix"
    try:
        preset = register_memory(name, spec)
        assert preset == name + "-tiny" and name in FAMILIES
        _train_a_little(preset, spec, tiny_data)
    finally:  # leave the registries as the other tests expect them
        FAMILIES.pop(name, None)
        PRESETS.pop(name + "-tiny", None)
        PRESET_NOTES.pop(name + "-tiny", None)
        SPECS.pop(name, None)


def _train_a_little(preset: str, spec: MemorySpec, tiny_data) -> None:
    cfg = preset_config(preset, vocab_size=256, dim=64, n_layers=2, n_heads=2, ffn_hidden=128)
    model = build_model(cfg, seed=0)
    assert model.blocks[0].mixer.spec == spec
    _, train, _ = tiny_data
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        starts = torch.randint(0, len(train) - 65, (8,), generator=gen).tolist()
        batch = torch.stack([torch.as_tensor(train.get(s, 65)) for s in starts]).long()
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(256) - 0.2
    assert sum(losses[-5:]) / 5 < losses[0] - 1.8, losses[-5:]  # ln(256) = 5.5 -> below 3.8


def test_bench_name_quotes_strings_and_rejects_options() -> None:
    assert bench_name(MemorySpec()) == "nested"
    assert bench_name(MemorySpec(retention="none")) == "nested:retention='none'"
    with pytest.raises(ValueError, match="cannot be passed on the bench command line"):
        bench_name(MemorySpec(options={"x": 1}))
    with pytest.raises(ValueError, match="unknown layer options"):
        bench_name(MemorySpec(), lr_max=1.0)
