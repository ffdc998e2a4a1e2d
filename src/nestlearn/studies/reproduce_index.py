"""``index.md`` of ``nestlearn reproduce``: written from a results dict (``OUT/results.json``).

Separate from the driver (:mod:`nestlearn.studies.reproduce`) so a report can be rebuilt without
running anything: ``write_index(json.load(open("OUT/results.json")), "OUT")``. The tables and the
verdict sentences come from :mod:`nestlearn.studies.report_md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nestlearn.studies import report_md as R

__all__ = ["cost_section", "scale_statement", "sniah_section", "write_index"]


def scale_statement(results: dict[str, Any]) -> str:
    """One paragraph: our parameters and tokens against the paper's 760M/30B and 1.3B/100B."""
    lm = [r for r in results.get("lm", []) if "params" in r]
    params = max((r["params"] for r in lm), default=0)
    tokens = max((r.get("tokens", 0) for r in lm), default=0)
    if not lm:
        return "No language model finished training, so there is no scale to state."
    return (
        f"**Scale.** Our models have about {params / 1e6:.1f}M parameters and saw "
        f"{tokens / 1e6:.2f}M training tokens each (byte-level tokenizer, embedded public-domain "
        f"corpus). The paper trains 760M-parameter models on 30B tokens and 1.3B on 100B "
        f"(arXiv 2512.24695 §9.3): about {760e6 / params:,.0f}x more parameters and "
        f"{30e9 / max(tokens, 1):,.0f}x more tokens than here. Results at this scale say whether "
        "the code runs and learns; they are not evidence for or against the paper's numbers."
    )


def cost_section(meta: dict[str, Any]) -> list[str]:
    """Markdown lines: what each stage cost, summed over every run that computed part of it."""
    costs = meta.get("stage_cost")
    if not costs:
        return []
    md = [
        "## Cost",
        "",
        "Compute seconds per stage, summed over the items (training runs, evaluations) as each "
        "was computed, across resumes; a cached item from a version that kept no timing counts "
        f"as untimed. This invocation's wall time: {meta.get('wall_time_s', 0):.0f} s.",
        "",
        "| stage | items | timed | seconds | minutes |",
        "|---|--:|--:|--:|--:|",
    ]
    total = 0.0
    for name, c in costs.items():
        total += c["seconds"]
        md.append(
            f"| {name} | {c['items']} | {c['timed']} | {c['seconds']:,.0f} | "
            f"{c['seconds'] / 60:.1f} |"
        )
    md += [f"| **total** | | | {total:,.0f} | {total / 60:.1f} |", ""]
    untimed = sum(c["items"] - c["timed"] for c in costs.values())
    if untimed:
        md += [
            f"{untimed} item(s) came from a cache without timings, so the total is a lower bound.",
            "",
        ]
    return md


def sniah_section(results: dict[str, Any]) -> list[str]:
    """Markdown lines of the S-NIAH analogue (none when the suite skipped it)."""
    s = results.get("suite", {})
    rows = results.get("sniah", [])
    if not s.get("sniah_tasks"):
        return []
    md = ["## 6b. Long-context retrieval: S-NIAH analogue (Table 1 layout)", ""]
    ok = [r for r in rows if "accuracy" in r]
    if not ok:
        return (
            md
            + ["**Not run.**", ""]
            + [f"- {r['model']} {r['task']}: failed: {r['error']}" for r in rows if "error" in r]
        )
    from nestlearn.studies.sniah import sniah_table

    runs = {(r["model"], r.get("seed")): r for r in ok}  # every task row carries its run's times
    train_s = sum(r.get("train_time_s", 0.0) for r in runs.values())
    test_s = sum(r.get("eval_time_s", 0.0) for r in runs.values())
    md += [
        f"Each family trains one small model on the tasks (batches cycling through them) at "
        f"{s.get('sniah_train_length')} tokens ({s.get('sniah_steps')} steps; loss: the answer "
        "plus next-token prediction elsewhere), then retrieves the needle from "
        f"{s.get('sniah_samples')} held-out samples per task and length, streamed in windows of "
        "the training length with the state carried (the transformer keeps its whole KV cache). "
        "Percent of needles retrieved whole (`nestlearn.studies.sniah`; "
        "docs/evaluation_synthetic.md). The paper's Table 1 is at 4K/8K/16K with 760M-parameter "
        f"models, for reference only. Training {train_s / 60:.1f} min, testing "
        f"{test_s / 60:.1f} min in all.",
        "",
        sniah_table(ok),
        "",
    ]
    if "sniah" in results.get("plots", {}):
        md += [f"![S-NIAH analogue]({results['plots']['sniah']})", ""]
    md += [f"- {r['model']} {r['task']}: failed: {r['error']}" for r in rows if "error" in r]
    return md


def write_index(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/index.md`` from a results dict (layout of :class:`Reproduction`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = results.get("suite", {})
    meta = results.get("meta", {})
    md = [
        f"# nestlearn reproduce: suite `{s.get('name', '?')}`",
        "",
        f"{s.get('description', '')}. Models: {', '.join(meta.get('models', []))}; "
        f"{s.get('seeds', '?')} seed(s); {s.get('tokens', 0):,} training tokens per run "
        f"(batch {s.get('batch_size')} x {s.get('seq_len')}). Machine: {meta.get('machine', '?')}"
        f"; started {meta.get('started', '?')}; wall time {meta.get('wall_time_s', 0):.0f} s. "
        "Values are mean ± sample std over seeds (a single value where one seed ran).",
        "",
        *(
            [
                "**Partial report** (`--report-only`): written from the runs and evaluations "
                "that had finished in this folder; items not run yet are left out of every table.",
                "",
            ]
            if meta.get("report_only")
            else []
        ),
        "## 1. Setup and scale",
        "",
        scale_statement(results),
        "",
        "## 2. Language modelling",
        "",
        "Validation and test splits of the embedded corpus; bits/byte is comparable across "
        "tokenizers.",
        "",
        R.lm_table(results.get("lm", [])),
        "",
    ]
    if "loss curves" in results.get("plots", {}):
        md += ["![loss curves](loss_curves.png)", ""]
    md += ["## 3. Zero-shot commonsense (Table 2 layout)", ""]
    zs = results.get("zeroshot", {})
    if zs.get("runs"):
        md += [
            f"{zs.get('limit') or 'All'} items per task"
            + (f" ({zs['wikitext_limit']} WikiText-2 articles)" if zs.get("wikitext_limit") else "")
            + ". Accuracies in %, perplexities as is. "
            "Paper rows: arXiv 2512.24695 Table 2, 760M params / 30B tokens, for reference only. "
            "HellaSwag is not shipped (n/a). Models of ~3M parameters sit at chance on these "
            "tasks; the chance row says where that is.",
            "",
            R.zeroshot_table(zs),
            "",
        ]
    else:
        why = zs.get("skipped", "no run finished")
        md += [f"**Skipped:** {why}.", ""]
    md += ["## 4. Needle in a haystack (Table 1)", ""]
    niah = results.get("niah", [])
    errs = [r for r in niah if "error" in r]
    if any("score" in r for r in niah):
        md += [
            "RULER string-match recall in %, at lengths our models can hold (trained at "
            f"{s.get('seq_len')} tokens); {s.get('niah_samples')} samples per cell. The paper's "
            "column is its Table 1 at 4K/8K/16K, for reference only.",
            "",
            R.niah_table(niah),
            "",
        ]
        md += [f"![{k}]({v})" for k, v in results.get("plots", {}).items() if k.startswith("niah")]
        md.append("")
    else:
        md += ["**Not run** (no trained model).", ""]
    md += [f"- {r['model']} seed {r['seed']}: NIAH failed: {r['error']}" for r in errs]
    md += ["## 5. In-context recall: MQAR and MAD (Tables 3-4 layout)", ""]
    rec = results.get("recall", [])
    if rec:
        md += [
            f"Each family trains its own small model on each task ({s.get('recall_steps')} steps)"
            "; test accuracy in %. Paper rows: Table 4 (MAD), for reference only.",
            "",
            R.task_table(rec, "task", R.MAD_COLUMNS, "accuracy", R.PAPER_TABLE4, "paper"),
            "",
        ]
        md += [f"- {r['model']} {r['task']}: failed: {r['error']}" for r in rec if "error" in r]
    else:
        md += ["**Not run.**", ""]
    md += ["## 6. Formal language recognition (Table 5 layout)", ""]
    formal = results.get("formal", [])
    if formal:
        md += [
            f"Bin0 (training lengths) / Bin1 (longer strings) accuracy in %, {s.get('formal_steps')}"
            " training steps per family. Paper rows: Table 5.",
            "",
            R.formal_table([r for r in formal if "bin0" in r]),
            "",
        ]
        md += [
            f"- {r['model']} {r['language']}: failed: {r['error']}" for r in formal if "error" in r
        ]
    else:
        md += ["**Not run.**", ""]
    md += sniah_section(results)
    md += ["## 7. Context usage (Fig. 10)", ""]
    if "context usage" in results.get("plots", {}):
        md += [
            f"Mean next-token loss against position on {s.get('context_length')}-token test "
            f"windows; the dashed line marks the training length ({s.get('seq_len')}).",
            "",
            "![context usage](context_usage.png)",
            "",
        ]
    else:
        md += ["**Not run** (no trained model, or the evaluation failed).", ""]
    from nestlearn.studies.reproduce_studies import studies_section

    md += studies_section(results)
    md += cost_section(meta)
    md += ["## 8. Honest verdict", ""]
    md += [f"- {line}" for line in R.verdict(results)] or ["- Nothing finished; no verdict."]
    md += [f"- {scale_statement(results).replace('**Scale.** ', '')}", ""]
    path = out / "index.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path
