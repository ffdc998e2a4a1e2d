"""``nestlearn export``: a training run as a Hugging Face model folder.

The folder holds what ``from_pretrained`` needs and nothing that runs code::

    config.json               model type nestlearn-<family>, our ModelConfig under "nestlearn"
    generation_config.json    bos / eos / pad ids (greedy decoding by default)
    model.safetensors         parameters, named model.<nestlearn name>
    tokenizer.json            the run's tokenizer as a `tokenizers` file (byte, BPE, hf:PATH)
    tokenizer_config.json     (and whatever else the installed transformers writes)
    training_config.yaml      the run's resolved config.yaml
    README.md                 model card: shape, training config, evaluation results

Tokenizer convention: documents in our training data are separated by ``<|eos|>``, and
``nestlearn generate`` starts every prompt with it. The exported tokenizer does the same
(``tokenizer(text)`` prepends the eos id; its ``bos_token`` is the eos token), so
``generate()`` from the exported folder continues text exactly as ``nestlearn generate`` does.
Special-token text inside a prompt is encoded as text, as in nestlearn.

The folder is written next to ``out`` under a temporary name, checked (the reloaded model's
logits must match the run's model) and renamed into place, so an interrupted export never
leaves a half-written folder under the requested name.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nestlearn.data.tokenizers import SPECIAL_TOKENS, ByteTokenizer, Tokenizer, _byte_level_inverse
from nestlearn.hf.modeling import NestlearnForCausalLM
from nestlearn.train.config import config_dict
from nestlearn.train.report import read_metrics
from nestlearn.train.run import LoadedRun, load_run
from nestlearn.utils.files import fsync_tree

logger = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-5
"""Largest |logit difference| accepted between the run's model and the reloaded export."""


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    family: str
    step: int
    params: int
    max_abs_diff: float | None
    """Logit difference of the reloaded folder against the run's model (None: not verified)."""


# ---------------------------------------------------------------------------- tokenizer
def byte_tokenizer_json() -> Any:
    """Our ``byte`` tokenizer as a ``tokenizers.Tokenizer``: id ``b`` is byte ``b`` (through
    the byte-level alphabet), then ``<|bos|>`` 256, ``<|eos|>`` 257, ``<|pad|>`` 258."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {ch: b for ch, b in _byte_level_inverse().items()}
    tk = TkTokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(SPECIAL_TOKENS))
    ref = ByteTokenizer()
    got = [tk.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != [ref.bos_id, ref.eos_id, ref.pad_id]:  # pragma: no cover - tokenizers changed
        raise RuntimeError(f"byte tokenizer specials landed on ids {got}, expected 256-258")
    return tk


def hf_tokenizer(tok: Tokenizer) -> Any:
    """A ``transformers`` fast tokenizer that encodes and decodes like ``tok``, with the eos
    token prepended to every input (see the module docstring)."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if isinstance(tok, ByteTokenizer):
        tk = byte_tokenizer_json()
    elif getattr(tok, "path", None) is not None:
        tk = TkTokenizer.from_file(str(tok.path))
    else:
        raise ValueError(
            f"cannot export tokenizer {tok!r}: only byte, bpe-8192 and hf:PATH tokenizers "
            "have a Hugging Face form"
        )
    eos, pad = tk.id_to_token(tok.eos_id), tk.id_to_token(tok.pad_id)
    template = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, tok.eos_id)]
    )
    old = json.loads(tk.to_str()).get("post_processor") or {}
    # keep a byte-level offsets fixer; drop any other template (e.g. one adding a bos)
    if old.get("type") == "ByteLevel":
        tk.post_processor = processors.Sequence([tk.post_processor, template])
    else:
        tk.post_processor = template
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=eos,
        eos_token=eos,
        pad_token=pad,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )


def _portable_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class every transformers release knows (5.x writes its new
    ``TokenizersBackend``, which 4.x cannot load; both load ``PreTrainedTokenizerFast``)."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- model card
def _run_dir(run: LoadedRun) -> Path:
    # <run>/checkpoints/step_XXXXXXXX
    return run.checkpoint.parent.parent


def evaluation_results(run_dir: Path) -> dict[str, Any]:
    """Evaluation numbers found in a run folder: the validation records of ``metrics.jsonl``
    and the scalar entries of any ``*result*.json`` file (e.g. ``compare_result.json``)."""
    found: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        _, evals = read_metrics(metrics)
        if evals:
            found["validation"] = evals
    for path in sorted(run_dir.glob("*result*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("skipping unreadable %s", path)
            continue
        if isinstance(data, dict):
            scalars = {
                k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None
            }
            if scalars:
                found[path.name] = scalars
    return found


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(run: LoadedRun, params: int, results: dict[str, Any], config_yaml: str) -> str:
    """The README.md of an exported folder."""
    m = run.cfg.model
    name = _run_dir(run).name
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- nestlearn",
        f"- {m.family}",
        "- text-generation",
        "---",
        "",
        f"# {name} ({m.family}, nestlearn)",
        "",
        f"A `{m.family}` language model trained with nestlearn (Nested Learning in PyTorch) and "
        f"exported by `nestlearn export` from run `{name}` at step {run.step}.",
        "",
        "## Use",
        "",
        "```python",
        "import nestlearn  # registers the nestlearn-* model types with transformers",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tok = AutoTokenizer.from_pretrained("PATH")',
        'ids = tok("The ", return_tensors="pt").input_ids  # the tokenizer prepends <eos>',
        "out = model.generate(ids, max_new_tokens=100, do_sample=True, temperature=0.8)",
        "print(tok.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        "Needs `pip install nestlearn transformers`; no remote code is run "
        "(`trust_remote_code=False`). Prompts in one batch must have the same length: "
        "nestlearn models take no padding mask.",
        "",
        "## Model",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| family | `{m.family}` (model type `nestlearn-{m.family}`) |",
        f"| parameters | {params:,} |",
        f"| layers x width | {m.n_layers} x {m.dim} ({m.n_heads} heads) |",
        f"| vocabulary | {m.vocab_size} (tokenizer `{run.cfg.data.tokenizer}`) |",
        f"| training length | {run.cfg.data.seq_len} tokens |",
        f"| tied embeddings | {m.tie_embeddings} |",
    ]
    if m.mixer:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(m.mixer.items()))
        lines.append(f"| mixer options | {opts} |")
    lines += ["", "## Evaluation", ""]
    evals = results.get("validation")
    if evals:
        lines += [
            f"Validation split of the run's data, as logged during training "
            f"({len(evals)} evaluation(s); the last {min(len(evals), 5)} shown):",
            "",
            "| step | loss (nats/token) | perplexity | bits/byte |",
            "| --- | --- | --- | --- |",
        ]
        for r in evals[-5:]:
            lines.append(
                f"| {r.get('step')} | {_fmt(r.get('val_loss'))} | {_fmt(r.get('val_ppl'))} "
                f"| {_fmt(r.get('val_bpb'))} |"
            )
        lines.append("")
    for fname, scalars in results.items():
        if fname == "validation":
            continue
        lines += [f"From `{fname}`:", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
        lines.append("")
    if not results:
        lines += ["The run folder holds no evaluation results.", ""]
    lines += [
        "## Training configuration",
        "",
        f"Trained for {run.step} optimizer steps. The run's resolved config "
        "(also in `training_config.yaml`):",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ export
def verify_export(folder: Path, model: torch.nn.Module, vocab_size: int) -> float:
    """Reload ``folder`` with ``AutoModelForCausalLM`` (local files only) and return the largest
    absolute logit difference against ``model`` on a fixed random input."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False
    )
    loaded.eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab_size, (2, 24), generator=gen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref, _ = model(idx)
            got = loaded(idx, use_cache=False).logits
    finally:
        model.train(was_training)
    return float((ref.float() - got.float()).abs().max())


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def _check_out(checkpoint: Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that would overwrite or mix with the run being exported, a file, and
    (even with ``force``) a non-empty folder that is not an earlier export."""
    src = checkpoint.resolve()
    is_ckpt = (src / "meta.json").is_file()
    run = src.parent.parent if is_ckpt else src
    dst = out.resolve()
    pairs = [("the checkpoint", src)] if is_ckpt else []
    for what, folder in pairs + [("the run folder", run)]:
        if _inside(dst, folder) or _inside(folder, dst):
            rel = "is" if dst == folder else ("is inside" if _inside(dst, folder) else "holds")
            raise FileExistsError(
                f"--out {out} {rel} {what} {folder}; exporting there would overwrite the run. "
                "Choose an --out outside the run folder"
            )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} already exists; choose another --out or pass --force")
        if not _is_export(out):
            raise FileExistsError(
                f"{out} is not a nestlearn export (no config.json of a nestlearn-* model), so "
                "--force will not replace it; choose another --out"
            )


def _is_export(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and str(cfg.get("model_type", "")).startswith("nestlearn-")


def export_run(
    checkpoint: str | Path, out: str | Path, *, force: bool = False, verify: bool = True
) -> ExportResult:
    """Write the Hugging Face folder of a run (or of one checkpoint folder) to ``out``.

    Raises:
        FileNotFoundError / CheckpointError / ConfigError: the run cannot be loaded.
        FileExistsError: ``out`` exists and is not empty (pass ``force=True`` to replace it).
        RuntimeError: the reloaded folder's logits differ from the run's model.
    """
    out = Path(out)
    _check_out(Path(checkpoint), out, force)
    run = load_run(checkpoint)
    model = run.model
    hf_model = NestlearnForCausalLM.from_language_model(
        model,
        bos_token_id=run.tokenizer.eos_id,
        eos_token_id=run.tokenizer.eos_id,
        pad_token_id=run.tokenizer.pad_id,
    )
    tokenizer = hf_tokenizer(run.tokenizer)
    run_dir = _run_dir(run)
    config_yaml = yaml.safe_dump(config_dict(run.cfg), sort_keys=False)
    results = evaluation_results(run_dir)
    params = model.num_params()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _portable_tokenizer_class(tmp / "tokenizer_config.json")
        (tmp / "training_config.yaml").write_text(config_yaml, encoding="utf-8")
        (tmp / "README.md").write_text(
            model_card(run, params, results, config_yaml), encoding="utf-8"
        )
        diff = None
        if verify:
            diff = verify_export(tmp, model, run.cfg.model.vocab_size)
            if not diff < VERIFY_TOLERANCE:
                raise RuntimeError(
                    f"the exported model's logits differ from the run's by {diff:.3g} "
                    f"(> {VERIFY_TOLERANCE}); the export was not written. Please report this."
                )
        fsync_tree(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous export back
        kept = "; the previous export is intact" if out.exists() else ""
        if isinstance(e, OSError) and not e.filename:
            raise OSError(e.errno, f"{e.strerror or e}{kept}", str(out)) from e
        if type(e).__name__ == "SafetensorError":  # safetensors' own I/O errors (disk full)
            raise OSError(errno.EIO, f"{e}{kept}", str(out)) from e
        raise
    files = sorted(p.name for p in out.iterdir())
    return ExportResult(out, files, run.cfg.model.family, run.step, params, diff)
