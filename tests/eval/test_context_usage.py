"""Context usage (Fig. 10): windows, per-position losses, buckets, a trained curve, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nestlearn.eval.context_usage import (
    document_windows,
    format_markdown,
    log_buckets,
    position_losses,
    summarize,
)
from nestlearn.models import build_model, preset_config


def test_log_buckets_cover_every_position_once():
    assert log_buckets(1) == [(1, 1)]
    assert log_buckets(10) == [(1, 1), (2, 3), (4, 7), (8, 10)]
    b = log_buckets(4096)
    assert b[-1] == (2048, 4095) or b[-1] == (4096, 4096)
    covered = [p for a, z in b for p in range(a, z + 1)]
    assert covered == list(range(1, 4097))


def test_document_windows_tile_documents_and_interleave():
    docs = [list(range(100, 125)), list(range(200, 210)), list(range(300, 303))]
    w = document_windows(docs, 4, doc_start=7)
    # doc 0 -> [7, 100..124] = 26 ids -> 6 windows; doc 1 -> 11 ids -> 2; doc 2 -> 4 ids -> 0
    assert w.shape == (8, 5)
    assert w[0].tolist() == [7, 100, 101, 102, 103] and w[1].tolist() == [7, 200, 201, 202, 203]
    assert w[2].tolist() == [103, 104, 105, 106, 107]  # consecutive windows share one token
    assert document_windows(docs, 4, doc_start=7, max_windows=3).shape == (3, 5)
    with pytest.raises(ValueError, match="lower --length"):
        document_windows(docs, 64)


def _model(max_seq_len: int = 64):
    cfg = preset_config(
        "transformer-tiny", vocab_size=40, dim=32, n_layers=2, n_heads=2, max_seq_len=max_seq_len
    )
    return build_model(cfg, seed=0).double()


def test_position_losses_are_token_losses_and_segments_match_one_pass():
    m = _model()
    w = torch.randint(0, 40, (3, 25), generator=torch.Generator().manual_seed(0))
    got = position_losses(m, w, batch_size=2)
    logits, _ = m(w[:, :-1])
    want = F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")
    torch.testing.assert_close(got, want.detach().double(), rtol=1e-5, atol=1e-6)
    # threading the KV cache through segments of 7 gives the same losses
    seg = position_losses(m, w, batch_size=3, segment=7)
    torch.testing.assert_close(seg, got, rtol=1e-5, atol=1e-6)


def test_summarize_buckets_are_means_with_standard_errors():
    losses = torch.arange(3 * 10, dtype=torch.float64).reshape(3, 10)
    r = summarize(losses, "x", train_len=8)
    assert r.windows == 3 and r.length == 10
    assert r.position_loss == pytest.approx(losses.mean(0).tolist())
    b = r.buckets[2]  # positions 4..7
    per_window = losses[:, 3:7].mean(1)
    assert (b["start"], b["end"]) == (4, 7) and b["loss"] == pytest.approx(per_window.mean().item())
    assert b["stderr"] == pytest.approx(per_window.std().item() / np.sqrt(3))
    assert b["tokens"] == 12
    md = format_markdown([r])
    assert md.splitlines()[0] == "| positions | x |" and "| 4-7 |" in md


class CacheLM(torch.nn.Module):
    """A constructed model that uses its context: p(next = v) ∝ alpha + count of v so far.

    On real text its loss falls with position as the counts fill in (a unigram cache).
    """

    def __init__(self, vocab: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.tensor(alpha, dtype=torch.float64))
        self.vocab = vocab

    def forward(self, idx, *, state=None, return_state=False):
        counts = F.one_hot(idx, self.vocab).double().cumsum(1)  # [B, T, V]
        return torch.log(counts + self.alpha), None


def test_curve_falls_with_position_for_a_model_that_uses_context():
    from nestlearn.data import get_tokenizer
    from nestlearn.eval.context_usage import corpus_windows

    tok = get_tokenizer("byte")
    w = corpus_windows(tok, "test", 256, max_windows=24)
    r = summarize(position_losses(CacheLM(tok.vocab_size), w, batch_size=8), "cache")
    loss = [b["loss"] for b in r.buckets]  # positions 1, 2-3, ..., 128-255, 256
    assert all(a > b for a, b in zip(loss[:-1], loss[1:-1])), loss
    assert loss[0] - loss[-2] > 1.5, loss
    # position 1: every byte but the one seen is at alpha / (1 + 258 alpha), so ~ln(259 + 2)
    assert loss[0] == pytest.approx(np.log(1 + 259 * 0.5) - np.log(0.5), abs=0.05)


def _train(tmp_path_factory, name: str, steps: int, dim: int, layers: int):
    from nestlearn.data import get_tokenizer
    from nestlearn.train import Trainer, resolve_config
    from nestlearn.train.batches import ArrayTokens
    from tests.conftest import source_text_tokens

    arr = source_text_tokens()
    cfg = resolve_config(
        "transformer-tiny",
        None,
        [
            f"model.dim={dim}",
            f"model.n_layers={layers}",
            "model.n_heads=2",
            "model.max_seq_len=64",
            "data.seq_len=64",
            "data.batch_size=8",
            f"train.steps={steps}",
            "train.eval_every=0",
            "train.eval_tokens=512",
            "train.progress=false",
            "optim.lr=3e-3",
            "schedule.warmup_steps=10",
        ],
    )
    run_dir = tmp_path_factory.mktemp(name) / "run"
    cut = int(len(arr) * 0.9)
    tok = get_tokenizer("byte")
    Trainer(cfg, run_dir=run_dir, data=(tok, ArrayTokens(arr[:cut]), ArrayTokens(arr[cut:]))).fit()
    return run_dir


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run folder with a byte-level checkpoint (3 steps: enough for the CLI plumbing)."""
    return _train(tmp_path_factory, "cu", steps=3, dim=32, layers=1)


def test_curve_of_a_trained_model_falls_with_position(tmp_path_factory):
    from nestlearn.eval.context_usage import corpus_windows
    from nestlearn.train.run import load_run

    run = load_run(_train(tmp_path_factory, "cu150", steps=150, dim=64, layers=2))
    w = corpus_windows(run.tokenizer, "test", 64, max_windows=48)
    r = summarize(position_losses(run.model, w, batch_size=16), "trained")
    loss = [b["loss"] for b in r.buckets]  # positions 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64
    # more context -> lower loss: the first three buckets fall, by a wide margin overall
    assert loss[0] > loss[1] > loss[2], loss
    assert loss[0] - min(loss[3:]) > 0.5, loss
    assert max(loss[3:]) < loss[1], loss


def test_cli_writes_plot_table_and_json_for_several_checkpoints(small_run, tmp_path, capsys):
    from nestlearn.cli import main

    out = tmp_path / "cu"
    argv = ["context-usage", "--checkpoint", str(small_run), "--checkpoint", str(small_run)]
    argv += ["--label", "a", "--label", "b", "--length", "32", "--max-windows", "6"]
    argv += ["--batch-size", "3", "--segment", "16", "--out", str(out), "--json"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["label"] for r in rec["results"]] == ["a", "b"]
    assert rec["results"][0]["windows"] == 6 and len(rec["results"][0]["buckets"]) == 6
    # the same checkpoint twice gives the same curve (deterministic, state threaded exactly)
    a, b = (r["buckets"] for r in rec["results"])
    assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], rel=1e-6)
    saved = json.loads((out / "context_usage.json").read_text())
    assert len(saved) == 2 and len(saved[0]["position_loss"]) == 32
    assert (out / "context_usage.png").stat().st_size > 5000
    assert "| 16-31 |" in (out / "context_usage.md").read_text()
    with pytest.raises(SystemExit):
        main(["context-usage"])  # --checkpoint is required
    assert main(["context-usage", "--checkpoint", str(small_run), "--length", "1"]) == 2
