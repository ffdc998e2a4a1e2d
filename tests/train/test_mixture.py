"""Source mixtures and document boundaries: deterministic sampling, exact resume, no carry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nestlearn.data.mixture import Mixture, parse_mixture
from nestlearn.train import Trainer, resolve_config
from nestlearn.train.batches import IGNORE_INDEX, ArrayTokens, BatchSampler
from nestlearn.train.config import ConfigError

BASE = [
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "data.batch_size=8",
    "train.progress=false",
    "train.eval_tokens=1024",
    "schedule.warmup_steps=5",
    "train.threads=1",
]


def test_parse_mixture_specs_and_errors():
    e = parse_mixture("data/fineweb:0.9,data/longdocs:0.1")
    assert [(x.path, x.weight, x.name) for x in e] == [
        ("data/fineweb", 0.9, "fineweb"),
        ("data/longdocs", 0.1, "longdocs"),
    ]
    assert [x.weight for x in parse_mixture("a,corpus")] == [None, None]
    assert parse_mixture("corpus")[0].weight is None
    assert [x.name for x in parse_mixture("x/web:1,y/web:1")] == ["web", "web_2"]
    for bad, match in [
        ("a:0.5,b", "every source or to none"),
        ("a:-1,b:1", "positive"),
        ("a:1,,b:1", "empty part"),
        ("a:1,a:2", "twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_mixture(bad)
    with pytest.raises(ConfigError, match="every source"):
        resolve_config("transformer-tiny", None, ["data.train=a:1,b"])


def test_mixture_rows_follow_weights_and_are_a_function_of_seed_and_step():
    a, b = ArrayTokens(np.zeros(10_000, np.int64)), ArrayTokens(np.ones(3_000, np.int64))
    mix = Mixture([a, b], [0.8, 0.2], ["a", "b"])
    r1 = mix.rows(seed=3, step=17, batch_size=4096, seq_len=64)
    assert np.array_equal(r1, mix.rows(seed=3, step=17, batch_size=4096, seq_len=64))
    assert not np.array_equal(r1, mix.rows(seed=3, step=18, batch_size=4096, seq_len=64))
    share = (r1[:, 0] == 1).mean()
    assert abs(share - 0.2) < 0.03
    assert r1[r1[:, 0] == 1, 1].max() <= 3_000 - 65 and r1[:, 1].min() >= 0
    # no weights: in proportion to the tokens
    assert Mixture([a, b], None, ["a", "b"]).probs.tolist() == pytest.approx([10 / 13, 3 / 13])
    sampler = BatchSampler(mix, 64, 8, seed=0)
    x, y = sampler.make(sampler.rows(5))
    assert x.shape == y.shape == (8, 64)
    assert all(set(row.tolist()) <= {0} or set(row.tolist()) <= {1} for row in x)


def test_doc_boundary_reset_cuts_rows_at_the_first_eos():
    eos, pad = 9, 8
    stream = np.array([1, 2, 3, eos, 4, 5, eos, 6, 7, 7, 7, 7, eos, 1, 2], dtype=np.int64)
    sampler = BatchSampler(ArrayTokens(stream), 5, 1, 0, "reset", eos_id=eos, pad_id=pad)
    x, y = sampler.make(np.array([[0, 1], [0, 3], [0, 7], [0, 0]]))
    assert x.tolist() == [
        [2, 3, pad, pad, pad],  # the targets 3, eos end document one
        [eos, 4, 5, pad, pad],  # a row starting on an eos starts the next document
        [6, 7, 7, 7, 7],  # no eos in the targets: nothing cut
        [1, 2, 3, pad, pad],
    ]
    I = IGNORE_INDEX
    assert y.tolist() == [
        [3, eos, I, I, I],
        [4, 5, eos, I, I],
        [7, 7, 7, 7, eos],
        [2, 3, eos, I, I],
    ]
    plain = BatchSampler(ArrayTokens(stream), 5, 1, 0, "eos")
    assert plain.make(np.array([[0, 1]]))[1].tolist() == [[3, eos, 4, 5, eos]]


@pytest.mark.parametrize("family", ["hope-tiny", "titans-tiny"])
def test_reset_rows_carry_nothing_from_the_next_document(family):
    """A memory model's logits on a reset row equal those of its document alone."""
    from nestlearn.models import build_model

    cfg = resolve_config(family, None, ["model.dim=64", "model.n_layers=2", "model.n_heads=2"])
    cfg.model.vocab_size = 32
    model = build_model(cfg.model, seed=0).eval()
    rng = np.random.default_rng(0)
    eos = 31
    doc = rng.integers(0, 30, size=40)
    stream = np.concatenate([doc, [eos], rng.integers(0, 30, size=100)])
    sampler = BatchSampler(ArrayTokens(stream), 64, 1, 0, "reset", eos_id=eos, pad_id=30)
    x, y = sampler.make(np.array([[0, 0]]))
    keep = int((y != IGNORE_INDEX).sum())
    assert keep == 40 and y[0, keep - 1] == eos
    with torch.no_grad():
        row, _ = model(x)
        alone, _ = model(x[:, :keep])
        packed, _ = model(torch.from_numpy(stream[None, :64]))
    torch.testing.assert_close(row[:, :keep], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(row[:, keep:], packed[:, keep:])  # the next document is not read


def _prepared(tmp_path, name, docs):
    from nestlearn.data.prepare import prepare

    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare([src], tmp_path / name, "byte", progress=False)
    return str(tmp_path / name)


@pytest.fixture
def two_sources(tmp_path):
    from nestlearn.data.corpus import corpus_documents

    texts = [t for _, t in corpus_documents("validation")]
    paras = [p for t in texts for p in t.split("\n\n") if p.strip()]
    web = _prepared(tmp_path, "web", paras[:400])
    long = _prepared(tmp_path, "longdocs", ["\n\n".join(paras[400:700])])
    return web, long


def test_mixture_training_resumes_exactly_and_reports_each_source(two_sources, tmp_path):
    web, long = two_sources
    mix = [f"data.train={web}:0.7,{long}:0.3", "data.doc_boundary=reset"]
    steps = ["train.steps=10", "train.ckpt_every=0", "train.eval_every=5", *mix]
    cfg = lambda: resolve_config("transformer-tiny", None, BASE + steps)  # noqa: E731
    full = Trainer(cfg(), run_dir=tmp_path / "full").fit()

    def stop_at_4(trainer, step, loss):
        if step == 4:
            trainer.request_stop()

    part = Trainer(cfg(), run_dir=tmp_path / "part", on_step_end=stop_at_4).fit()
    assert part.interrupted and part.steps == 4
    rest = Trainer(cfg(), run_dir=tmp_path / "part", resume=True).fit()
    assert part.losses + rest.losses == full.losses  # bit for bit
    ev = full.final_eval
    assert set(ev) >= {"loss", "bpb", "web/loss", "longdocs/loss", "longdocs/bpb"}
    assert ev["loss"] == pytest.approx(0.7 * ev["web/loss"] + 0.3 * ev["longdocs/loss"])
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert all(0 < r["target_fraction"] <= 1 for r in train_lines)
    assert any(r["target_fraction"] < 1 for r in train_lines)  # short web documents were cut


def test_paper_mixture_recipe_resolves():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "hope-760m-paper-mixture.yaml"
    cfg = resolve_config(None, path)
    entries = parse_mixture(cfg.data.train)
    assert [(e.name, e.weight) for e in entries] == [("fineweb-edu", 0.9), ("longdocs", 0.1)]
    assert cfg.data.doc_boundary == "reset" and cfg.data.batch_size * cfg.data.seq_len == 2**19


def test_reset_loss_does_not_depend_on_accumulation(two_sources, tmp_path):
    """The loss is a mean over the step's real targets, however they split into micro-batches."""
    web, long = two_sources
    over = [f"data.train={web}:0.5,{long}:0.5", "data.doc_boundary=reset", "train.steps=4",
            "train.eval_every=0", "train.ckpt_every=0", "train.memory_stats=false"]  # fmt: skip
    one = Trainer(resolve_config("transformer-tiny", None, BASE + over), run_dir=tmp_path / "a")
    two = Trainer(
        resolve_config("transformer-tiny", None, [*BASE, *over, "train.grad_accum=4"]),
        run_dir=tmp_path / "b",
    )
    a, b = one.fit().losses, two.fit().losses
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_mixture_batches_are_checked_against_the_vocabulary(tmp_path):
    """Ids outside the model's vocabulary in one mixture source are refused before the model."""
    from nestlearn.data.mixture import MixtureValidation
    from tests.conftest import ByteTok

    good = np.arange(4000) % 256
    bad = np.arange(4000) % 300  # ids up to 299 for a 256-id model
    train = Mixture([ArrayTokens(good), ArrayTokens(bad)], [0.5, 0.5], ["good", "bad"])
    val = MixtureValidation([ArrayTokens(good[:400])] * 2, train.probs, ["good", "bad"])
    over = ["train.steps=2", "train.eval_every=0", "train.ckpt_every=0"]
    cfg = resolve_config("transformer-tiny", None, BASE + over)
    with pytest.raises(ValueError, match=r"token id 2\d\d is outside the model's vocabulary"):
        Trainer(cfg, run_dir=tmp_path, data=(ByteTok(), train, val)).fit()
    assert not (tmp_path / "checkpoints").exists()  # refused at the first batch, nothing saved


def test_mixture_validation_shorter_than_a_window_is_refused_at_start(tmp_path):
    """Each source is scored on its own held-out tail: each must hold one window."""
    from nestlearn.data.mixture import MixtureValidation
    from tests.conftest import ByteTok

    toks = np.arange(4000) % 256
    train = Mixture([ArrayTokens(toks), ArrayTokens(toks)], [0.5, 0.5], ["a", "b"])
    val = MixtureValidation([ArrayTokens(toks[:400]), ArrayTokens(toks[:40])], train.probs,
                            ["a", "b"])  # fmt: skip
    cfg = resolve_config("transformer-tiny", None, BASE + ["train.steps=2"])
    with pytest.raises(ValueError, match=r"validation data of mixture source 'b' holds 40 tokens"):
        Trainer(cfg, run_dir=tmp_path, data=(ByteTok(), train, val))
    assert not (tmp_path / "config.yaml").exists()


def test_mixture_resume_takes_the_checkpoint_config(two_sources, tmp_path):
    """`nestlearn train --resume` reads the config from the checkpoint: issue 21's fields
    (mixture, doc_boundary, log_to, memory_stats) round-trip and the resume is exact."""
    from nestlearn.train.rundir import resume_config

    web, long = two_sources
    over = [f"data.train={web}:0.6,{long}:0.4", "data.doc_boundary=reset", "train.steps=6",
            "train.ckpt_every=3", "train.eval_every=3", "train.memory_stats=false"]  # fmt: skip
    cfg = lambda: resolve_config("transformer-tiny", None, BASE + over)  # noqa: E731
    full = Trainer(cfg(), run_dir=tmp_path / "full").fit()

    def stop_at_4(trainer, step, loss):
        if step == 4:
            trainer.request_stop()

    run = tmp_path / "part"
    Trainer(cfg(), run_dir=run, on_step_end=stop_at_4).fit()
    (run / "config.yaml").write_text("damaged")  # the checkpoint's copy stands in for it
    got, ckpt = resume_config(run)
    assert got.to_dict() == cfg().to_dict() | {"model": got.to_dict()["model"]}
    assert got.data.train == f"{web}:0.6,{long}:0.4" and got.data.doc_boundary == "reset"
    assert got.train.memory_stats is False and got.train.log_to == "jsonl"
    rest = Trainer(got, run_dir=run, resume=True, checkpoint=ckpt).fit()
    assert rest.losses == full.losses[4:]  # bit for bit
    assert rest.final_eval == full.final_eval
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5, 6]
