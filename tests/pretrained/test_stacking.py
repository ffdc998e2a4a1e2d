"""Ad-hoc level stacking, the run folder and the `nestlearn pretrained` command (tiny GGUF)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf")

from nestlearn.cli import main  # noqa: E402
from nestlearn.memory.cms import ContinuumMemory  # noqa: E402
from nestlearn.models import ModelConfig, build_model  # noqa: E402
from nestlearn.pretrained import load_pretrained, stack_levels, stacked_config  # noqa: E402
from nestlearn.pretrained.export import write_run  # noqa: E402
from nestlearn.train.run import load_run  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.pretrained._tiny_gguf import hf_weights, write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", hf_weights(seed=2))


@pytest.fixture(scope="module")
def pre(tiny_path):
    return load_pretrained("smollm2-135m", gguf=tiny_path)


def _ids(vocab: int, B: int = 2, T: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(3))


def _streamed(model, x: torch.Tensor) -> torch.Tensor:
    """Prefill 13 tokens, then one token at a time, threading the model state."""
    logits, st = model(x[:, :13], state=model.init_state(x.shape[0]))
    parts = [logits]
    for t in range(13, x.shape[1]):
        logits, st = model(x[:, t : t + 1], state=st)
        parts.append(logits)
    return torch.cat(parts, 1)


def test_lr0_logits_bit_equal(pre):
    model = pre.model
    x = _ids(model.cfg.vocab_size)
    stacked = stack_levels(model, (4, 8, 16), lr=0.0).eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], stacked(x)[0])
        # decoding with a state (each level keeps its fast weights in the state): the same
        # function, but a 13-row prefill leaves GEMM edge tiles that the CMS's fused [gate; up]
        # product and the SwiGLU's two products round differently (measured 5e-6)
        torch.testing.assert_close(_streamed(stacked, x), _streamed(model, x), rtol=0, atol=2e-5)


def test_lr0_equal_to_rounding_when_width_is_no_multiple_of_64():
    # CPU vector kernels run a row's tail (here 80 = 64 + 16) through a scalar path that rounds
    # differently for the CMS's fused [gate; up] layout: equal to float32 rounding, not bitwise
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, ffn_hidden=80)
    model = build_model(cfg, seed=0).eval()
    x = _ids(50)
    with torch.no_grad():
        a, b = model(x)[0], stack_levels(model, (4,), lr=0.0)(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_mapping_one_mlp_per_level_cyclic_periods(pre):
    model = pre.model
    stacked = stack_levels(model, (4, 8), lr=1e-3)
    assert stacked.cfg.family == "transformer-cms"
    periods = [blk.ffn.periods for blk in stacked.blocks]
    assert periods == [(4,), (8,), (4,)]
    for src, dst in zip(model.blocks, stacked.blocks):
        assert isinstance(dst.ffn, ContinuumMemory) and len(dst.ffn.levels) == 1
        lvl = dst.ffn.levels[0]
        assert lvl.norm_weight is None  # the block's FFN norm is the level's norm
        for name in ("w_gate", "w_up", "w_down"):
            assert torch.equal(getattr(lvl, name).weight, getattr(src.ffn, name).weight)
        assert torch.equal(dst.mixer.wq.weight, src.mixer.wq.weight)
    torch.testing.assert_close(stacked.blocks[0].ffn.lrs(), torch.tensor([1e-3]))


def test_positive_rate_learns_in_context_after_the_first_period(pre):
    model = pre.model
    x = _ids(model.cfg.vocab_size)
    stacked = stack_levels(model, (4, 8, 16), lr=5e-3, lr_max=0.01).eval()
    with torch.no_grad():
        a, b = model(x)[0], stacked(x)[0]
    # every level reads its pretrained weights during its first chunk: tokens 0-3 unchanged
    assert torch.equal(a[:, :4], b[:, :4])
    assert (a[:, 4:] - b[:, 4:]).abs().amax() > 1e-6


def test_stacking_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="'transformer' model"):
        stacked_config(ModelConfig(family="titans", vocab_size=10, dim=32, n_heads=4))
    with pytest.raises(ValueError, match="multiple of 16"):
        stacked_config(ModelConfig(vocab_size=10, dim=32, n_heads=4, ffn_hidden=72))
    with pytest.raises(ValueError, match="learn_lr=false"):
        stacked_config(ModelConfig(vocab_size=10, dim=32, n_heads=4), lr=0.0, learn_lr=True)
    with pytest.raises(ValueError, match="layer_periods has 1 entries for 2 blocks"):
        cfg = ModelConfig(vocab_size=10, dim=32, n_heads=4, n_layers=2, family="transformer-cms")
        cfg.mixer = {"cms": {}, "layer_periods": [[4]]}
        build_model(cfg)


@pytest.mark.parametrize("stack", [False, True])
def test_run_folder_round_trip(pre, tmp_path, stack):
    model = stack_levels(pre.model, (4, 8), lr=1e-3).eval() if stack else pre.model
    out = write_run(tmp_path / "run", model, pre.tokenizer_json, provenance={"name": "tiny"})
    run = load_run(out)
    x = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(run.model(x)[0], model(x)[0])
    assert run.step == 0 and run.cfg.model == model.cfg
    assert run.cfg.data.tokenizer == f"hf:{(out / 'tokenizer.json').resolve()}"
    text = "the theme in 1999"
    assert run.tokenizer.encode(text) == pre.tokenizer.encode(text)
    assert json.loads((out / "pretrained.json").read_text())["name"] == "tiny"
    with pytest.raises(FileExistsError, match="--force"):
        write_run(out, model, pre.tokenizer_json, provenance={})


def test_cli_pretrained_generate_eval(tiny_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrained", "smollm2-135m", "--gguf", str(tiny_path), "--out", str(out)]) == 0
    assert "run folder" in capsys.readouterr().out
    args = ["--checkpoint", str(out), "--prompt", "the", "--temperature", "0"]
    assert main(["generate", *args, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the")
    txt = tmp_path / "doc.txt"
    txt.write_text("the theme of the thing in the inn " * 20)
    assert main(["eval", "--checkpoint", str(out), "--text", str(txt), "--seq-len", "32"]) == 0
    assert "perplexity" in capsys.readouterr().out
    # a second write into the same folder is refused with the fix
    argv = ["pretrained", "smollm2-135m", "--gguf", str(tiny_path), "--out", str(out)]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pretrained", "smollm2-135m", "--gguf", str(tmp_path / "no.gguf")]) == 2
    assert main([*argv, "--level-lr", "1e-3"]) == 2  # without --stack-levels


def test_continual_pretraining_of_stacked_model_lowers_the_loss(tiny_path, tmp_path):
    out = tmp_path / "cms"
    argv = ["pretrained", "smollm2-135m", "--gguf", str(tiny_path), "--out", str(out)]
    argv += ["--stack-levels", "--periods", "4,8", "--level-lr", "1e-3"]
    argv += ["--steps", "24", "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3"]
    assert main(argv) == 0
    data = tmp_path / "data"
    tok = f"hf:{out / 'tokenizer.json'}"
    text = REPO / "docs" / "cms.md"  # real English prose, ~15K characters
    assert (
        main(["prepare", str(text), "--out", str(data), "--tokenizer", tok, "--no-progress"]) == 0
    )
    before = load_run(out).model
    over = [f"data.train={data}", "train.progress=false", "schedule.warmup_steps=2"]
    assert main(["train", "--resume", str(out), *over]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    after = load_run(out)
    assert after.step == 24 and after.cfg.model.family == "transformer-cms"
    b0, a0 = before.blocks[0].ffn, after.model.blocks[0].ffn
    assert not torch.equal(b0.levels[0].w_down.weight, a0.levels[0].w_down.weight)
    assert not torch.equal(b0.lr_logit, a0.lr_logit)  # the level rates are learned too
