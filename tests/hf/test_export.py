"""`nestlearn export`: the Hugging Face folder of a run, loaded back offline."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import nestlearn  # noqa: E402,F401  (registers the model types)
from nestlearn.cli import main  # noqa: E402
from nestlearn.data import get_tokenizer  # noqa: E402
from nestlearn.models import build_model  # noqa: E402
from nestlearn.train.checkpoint import save_checkpoint  # noqa: E402
from nestlearn.train.config import dump_config, resolve_config  # noqa: E402


def make_run(tmp_path, preset="titans-tiny", tokenizer="byte", evals=True, **mixer):
    """A run folder as `nestlearn train` leaves it, without training (seconds)."""
    vocab = get_tokenizer(tokenizer).vocab_size
    over = [
        f"model.vocab_size={vocab}",
        "model.dim=64",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.ffn_hidden=128",
        f"data.tokenizer={tokenizer}",
    ] + [f"model.mixer.{k}={v}" for k, v in mixer.items()]
    cfg = resolve_config(preset, None, over)
    run = tmp_path / f"run-{preset}-{tokenizer}"
    run.mkdir()
    dump_config(cfg, run / "config.yaml")
    model = build_model(cfg.model, seed=5)
    save_checkpoint(run / "checkpoints", 7, model.state_dict())
    if evals:
        recs = [
            {"step": 5, "loss": 5.0, "lr": 1e-3},
            {"step": 7, "val_loss": 4.321, "val_ppl": 75.25, "val_bpb": 6.234},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run, model.eval()


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the export and its loading are offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "preset,tokenizer", [("titans-tiny", "byte"), ("transformer-tiny", "bpe-8192")]
)
def test_export_loads_back_with_the_same_logits_and_tokenizer(
    tmp_path, capsys, no_network, preset, tokenizer
):
    run, model = (
        make_run(tmp_path, preset, tokenizer, chunk_size=8)
        if preset.startswith("titans")
        else make_run(tmp_path, preset, tokenizer)
    )
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reloaded logits match" in printed
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]  # no temp left

    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    family = model.cfg.family
    assert loaded.config.model_type == f"nestlearn-{family}"
    idx = torch.randint(0, model.cfg.vocab_size, (2, 40))
    with torch.no_grad():
        diff = (loaded(idx).logits - model(idx)[0]).abs().max().item()
    assert diff < 1e-5

    ours = get_tokenizer(tokenizer)
    tok = AutoTokenizer.from_pretrained(out)
    for text in ["The cat sat.", "h\u00e9llo \u65e5\u672c \n\t x", "a literal <|eos|> in text"]:
        assert tok(text).input_ids == [ours.eos_id] + ours.encode(text)
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok.eos_token_id == ours.eos_id

    card = (out / "README.md").read_text()
    assert f"nestlearn-{family}" in card and "4.321" in card and "75.25" in card
    assert f"tokenizer: {tokenizer}" in card  # the training config is embedded


def test_exported_greedy_generation_equals_nestlearn_generate(tmp_path, capsys):
    run, _ = make_run(tmp_path, "titans-tiny", "byte", chunk_size=4)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    prompt, n = "The quick ", 24
    argv = ["generate", "--checkpoint", str(run), "--prompt", prompt]
    assert main(argv + ["--temperature", "0", "--max-new-tokens", str(n)]) == 0
    native_text = capsys.readouterr().out.rstrip("\n")

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(prompt, return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=n, do_sample=False)
    hf_text = prompt + tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    assert hf_text == native_text
    assert len(native_text.encode()) > len(prompt)


def test_export_refuses_bad_input_with_clear_errors(tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err

    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert main(["export", "--checkpoint", str(empty), "--out", str(out)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err

    run, _ = make_run(tmp_path, "transformer-tiny", evals=False)
    weights = next((run / "checkpoints").iterdir()) / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"\0" * 8)
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert "corrupted" in capsys.readouterr().err
    weights.write_bytes(good)
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    # --force replaces an earlier export only, never another folder
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--force"]) == 2
    assert "is not a nestlearn export" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--no-verify"]) == 0
    (out / "README.md").write_text("old")
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").is_file()
    assert "no evaluation results" in (out / "README.md").read_text()
    # never onto, into or around the run being exported, even with --force
    for bad in (run, run / "hf", run / "checkpoints", tmp_path):
        before = sorted(p.name for p in run.rglob("*"))
        assert main(["export", "--checkpoint", str(run), "--out", str(bad), "--force"]) == 2
        assert "would overwrite the run" in capsys.readouterr().err
        assert sorted(p.name for p in run.rglob("*")) == before


def test_a_failed_export_leaves_the_previous_folder(tmp_path, monkeypatch):
    import nestlearn.hf.export as ex

    run, _ = make_run(tmp_path, "transformer-tiny")
    out = tmp_path / "hf"
    ex.export_run(run, out, verify=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "model_card", boom)
    with pytest.raises(OSError, match="disk full"):
        ex.export_run(run, out, force=True, verify=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
