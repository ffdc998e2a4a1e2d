"""The benchmark harness: output fields, ratio logic and spec parsing (no timing assertions)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nestlearn import bench
from nestlearn.cli import bench as bench_cli
from nestlearn.layers.ffn import SwiGLU
from nestlearn.models import FAMILIES, Family, ModelConfig
from nestlearn.models.skeleton import Block

TINY = ["--dim", "32", "--layers", "1", "--vocab", "64", "--batch", "2", "--seq", "16",
        "--steps", "2", "--warmup", "0", "--decode-tokens", "3", "--peak-size", "128",
        "--threads", "1"]  # fmt: skip
FAKE = "bench-test-mlp"


@dataclass(frozen=True)
class _NaiveFamily(Family):
    supports_naive: bool = True


def _mlp_block(cfg: ModelConfig, layer: int) -> Block:
    # a token-wise "mixer": enough for the harness, which only needs the block signature
    return Block(cfg.dim, SwiGLU(cfg.dim, 2 * cfg.dim), None, cfg.norm_eps)


@pytest.fixture
def fake_family():
    """A family registered after import, that cannot decode and declares supports_naive."""
    FAMILIES[FAKE] = _NaiveFamily(FAKE, _mlp_block, "test-only MLP blocks", supports_decode=False)
    yield FAKE
    FAMILIES.pop(FAKE, None)


def _run(argv: list[str], capsys) -> list[dict]:
    parser = argparse.ArgumentParser()
    bench_cli.add_args(parser)
    assert bench_cli.run(parser.parse_args(argv)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_json_fields_values_and_ratios(capsys, fake_family):
    recs = _run([*TINY, "--model", "transformer", "--model", fake_family,
                 "--decode-context", "8,24", "--json"], capsys)  # fmt: skip
    assert [r["model"] for r in recs] == ["transformer", fake_family]
    for r in recs:
        assert list(r) == [*bench.SPEC_FIELDS, *bench.EXTRA_FIELDS]
        for key in ("params", "dim", "layers", "vocab", "batch", "seq", "train_tokens_per_s",
                    "fwd_tokens_per_s", "peak_mem_mb", "flops_per_token", "gflops",
                    "peak_gflops", "mfu"):  # fmt: skip
            assert _positive(r[key]), (key, r[key])
        assert (r["dim"], r["layers"], r["vocab"], r["batch"], r["seq"]) == (32, 1, 64, 2, 16)
        assert r["mfu"] == pytest.approx(r["gflops"] / r["peak_gflops"], rel=2e-3)
        assert r["gflops"] == pytest.approx(
            r["train_tokens_per_s"] * r["flops_per_token"] / 1e9, rel=2e-3
        )
        assert r["threads"] == 1 and r["dtype"] == "float32" and r["device"] == "cpu"
    t, f = recs
    assert t["peak_gflops"] == f["peak_gflops"]  # one peak measurement per run
    # the decoder: first context is the headline number, every context is in the mapping
    assert t["decode_context"] == 8 and list(t["decode_tokens_per_s_at"]) == ["8", "24"]
    assert t["decode_tokens_per_s"] == t["decode_tokens_per_s_at"]["8"]
    assert all(_positive(v) for v in t["decode_tokens_per_s_at"].values())
    # the family without decoding reports null, and no decode ratio
    assert f["decode_tokens_per_s"] is None and f["decode_vs_first"] is None
    assert f["decode_tokens_per_s_at"] == {"8": None, "24": None}
    # ratios are against the first model listed
    assert t["train_vs_first"] == t["fwd_vs_first"] == t["decode_vs_first"] == 1.0
    assert f["train_vs_first"] == pytest.approx(
        f["train_tokens_per_s"] / t["train_tokens_per_s"], rel=2e-3
    )
    assert f["fwd_vs_first"] == pytest.approx(
        f["fwd_tokens_per_s"] / t["fwd_tokens_per_s"], rel=2e-3
    )


def test_add_ratios_pure():
    recs = [
        {"train_tokens_per_s": 100.0, "fwd_tokens_per_s": 400.0, "decode_tokens_per_s": None},
        {"train_tokens_per_s": 50.0, "fwd_tokens_per_s": 800.0, "decode_tokens_per_s": 10.0},
        {"train_tokens_per_s": 300.0, "fwd_tokens_per_s": 100.0, "decode_tokens_per_s": 5.0},
    ]
    bench.add_ratios(recs)
    assert [r["train_vs_first"] for r in recs] == [1.0, 0.5, 3.0]
    assert [r["fwd_vs_first"] for r in recs] == [1.0, 2.0, 0.25]
    assert [r["decode_vs_first"] for r in recs] == [None, None, None]  # first cannot decode
    assert bench.add_ratios([]) == []


def test_table_output_and_skip_decode(capsys):
    parser = argparse.ArgumentParser()
    bench_cli.add_args(parser)
    args = parser.parse_args([*TINY, "--model", "transformer", "--model",
                              "transformer:n_layers=2", "--decode-context", "0"])  # fmt: skip
    assert bench_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "transformer:n_layers=2" in out and "vs 1st" in out and "MFU" in out
    lines = out.splitlines()
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned rows


def test_resolve_config_precedence(fake_family):
    cfg, naive = bench.resolve_config("transformer", dim=128)
    assert (cfg.dim, cfg.n_layers, cfg.vocab_size, cfg.n_heads) == (128, 4, 256, 2)
    assert naive is False
    # preset shape, CLI overrides, then spec options; vocab 0 presets get the bench default
    cfg, _ = bench.resolve_config("transformer-tiny:n_kv_heads=2", layers=2, max_seq_len=2048)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (256, 2, 4, 2)
    assert cfg.vocab_size == 256 and cfg.max_seq_len == 2048
    # unknown keys are family (mixer) options; --naive only reaches families that declare it
    cfg, naive = bench.resolve_config(f"{fake_family}:chunk=16,flag=true", naive=True)
    assert cfg.mixer == {"chunk": 16, "flag": True, "naive": True} and naive is True
    cfg, naive = bench.resolve_config("transformer", naive=True)
    assert cfg.mixer == {} and naive is False
    with pytest.raises(ValueError, match="unknown --model 'nope'"):
        bench.resolve_config("nope")
    with pytest.raises(ValueError, match="write key=value"):
        bench.parse_model_spec("transformer:dim")


def test_bench_model_api_and_script(capsys):
    rec = bench.bench_model(
        ModelConfig(vocab_size=32, dim=32, n_layers=1, n_heads=1), batch=1, seq=8, steps=1,
        warmup=0, decode_context=[4], decode_tokens=2, peak_gflops=1.0,
    )  # fmt: skip
    assert rec["model"] == "transformer" and rec["peak_gflops"] == 1.0
    assert rec["mfu"] == pytest.approx(rec["gflops"], rel=2e-3)
    assert _positive(rec["decode_tokens_per_s"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.bench_model("transformer", dtype="float16")

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([*TINY, "--decode-context", "0", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["decode_tokens_per_s"] is None


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_runs_on_cpu_at_the_tiny_shape(tmp_path, capsys):
    """benchmarks/gpu_bench.py (issue 16): every row and the step-memory part run on the CPU at
    a tiny shape, ratios are against the transformer row, and without CUDA the paper-shape run
    refuses with a clear message."""
    mod = _load_script("gpu_bench")
    out = tmp_path / "gb.json"
    args = ["--device", "cpu", "--models", "transformer,hope,gated-deltanet", "--dim", "32",
            "--seq", "32", "--decode", "40", "--memory-preset", "hope-tiny", "--json", str(out)]  # fmt: skip
    assert mod.main(args) == 0
    rec = json.loads(out.read_text())
    assert [r["model"] for r in rec["rows"]] == ["transformer", "hope", "gated-deltanet"]
    for r in rec["rows"]:
        assert _positive(r["train_tokens_per_s"]) and _positive(r["decode_tokens_per_s"])
        assert r["peak_mem_mb"] > 0
    assert rec["memory"]["model"] == "hope-tiny" and rec["memory"]["peak_mem_mb"] > 0
    text = capsys.readouterr().out
    assert "| transformer |" in text and "1.000x" in text and "one training step" in text
    with pytest.raises(SystemExit):
        mod.main(["--device", "cpu", "--models", "nope"])
    if not torch.cuda.is_available():
        assert mod.main([]) == 2
        assert "no CUDA device" in capsys.readouterr().err
