"""Run configuration: typed sections, YAML recipes and dotted overrides.

A run config is a :class:`TrainConfig` with sections ``model``, ``optim``, ``data``,
``schedule`` and ``train``. YAML files mirror it; ``key.sub=value`` overrides are parsed
as YAML scalars. Unknown keys and wrong types fail before any work with a message that
names the key and the fix (STYLE example 6).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nestlearn.models.config import ModelConfig
from nestlearn.optim.config import OptimConfig
from nestlearn.utils.config import ConfigError, from_dict
from nestlearn.utils.files import atomic_write_text

__all__ = [
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_dict",
    "config_text",
    "dump_config",
    "from_dict",
    "load_run_config",
    "load_yaml",
    "parse_override",
    "resolve_config",
]


@dataclass
class DataConfig:
    tokenizer: str = "byte"
    """Tokenizer: ``byte``, ``bpe-8192`` or ``hf:PATH/tokenizer.json``."""
    train: str = "corpus"
    """Training tokens: ``corpus`` (the embedded default corpus), a folder made by
    ``nestlearn prepare``, or a mixture ``PATH:WEIGHT,PATH:WEIGHT,...`` of these (e.g.
    ``data/fineweb-edu:0.9,data/longdocs:0.1``; weights are normalised; with none, sources
    count in proportion to their tokens). See ``nestlearn.data.mixture``."""
    val: str | None = None
    """Validation tokens: ``None`` means the corpus validation split when ``train`` is
    ``corpus``, otherwise the last ``val_fraction`` of the training tokens is held out (of
    each source of a mixture, scored separately and averaged with the mixture's weights)."""
    doc_boundary: str = "eos"
    """``eos``: training windows run across documents (an eos id between them), so attention
    and memory see the previous document. ``reset``: each window holds one document only
    (targets stop at its eos, the rest of the row is padding left out of the loss), so no
    attention and no per-sequence memory carries across a document start."""
    val_fraction: float = 0.02
    """Share of a prepared folder held out for validation when ``val`` is not given."""
    seq_len: int = 256
    """Tokens per training sequence."""
    batch_size: int = 16
    """Sequences per optimizer step, summed over ranks and accumulation steps."""

    def __post_init__(self) -> None:
        if self.seq_len <= 1:
            raise ValueError(f"data.seq_len must be > 1, got {self.seq_len}")
        if self.batch_size <= 0:
            raise ValueError(f"data.batch_size must be positive, got {self.batch_size}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.doc_boundary not in ("eos", "reset"):
            raise ValueError(f"data.doc_boundary must be eos or reset, got {self.doc_boundary!r}")
        from nestlearn.data.mixture import parse_mixture

        parse_mixture(self.train)  # a malformed mixture fails here, before any work


@dataclass
class ScheduleConfig:
    warmup_steps: int = 50
    """Linear warm-up from 0 to ``optim.lr``."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``min_lr_ratio * optim.lr`` on the last step."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class RunConfig:
    steps: int = 1000
    """Optimizer steps in the whole run."""
    seed: int = 0
    """Seeds the init and the data order."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (per rank)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    dtype: str = "auto"
    """``auto`` (bf16 autocast on GPUs that support it, else float32), ``float32``, ``bfloat16``."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each rank takes its local GPU)."""
    compile: bool = False
    """``torch.compile`` the model (``nestlearn.models.compiling.compile_model``): layers that
    loop over chunks (Titans, Hope, the CMS) get one compiled chunk step reused for every chunk;
    every other block or FFN is compiled whole. First steps pay the compile (docs/benchmarks.md,
    "Compiled chunk steps")."""
    compile_mode: str = "default"
    """``torch.compile`` mode with ``compile``: ``default``, ``reduce-overhead`` (CUDA graphs on
    GPUs), ``max-autotune`` or ``max-autotune-no-cudagraphs``."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (about one extra forward per
    step, far less activation memory; the paper-size Hope presets need it on one GPU)."""
    parallel: str = "ddp"
    """Under torchrun: ``ddp`` or ``fsdp`` (FSDP2, one shard unit per block)."""
    threads: int = 0
    """CPU threads for torch; 0 leaves torch's default."""
    mmap_threshold_kb: int = 1024
    """CPU runs on Linux (glibc): C heap requests of at least this many KiB get their own
    mapping, returned to the system when freed, instead of glibc's threshold that rises to 32
    MiB and lets the heap fragment (hope-tiny at 16 x 256: 3.8 GB resident against 2.1 GB with
    1024; ``nestlearn.train.heap``, docs/benchmarks.md "Training memory"). 0 keeps glibc's
    default."""
    log_every: int = 1
    """Write a metrics line every N steps."""
    eval_every: int = 100
    """Validation every N steps (and at the end); 0 disables."""
    eval_tokens: int = 65536
    """Validation tokens per evaluation."""
    ckpt_every: int = 200
    """Checkpoint every N steps (and at the end, and on SIGINT/SIGTERM); 0 = end only."""
    keep_last: int = 2
    """How many checkpoints to keep."""
    out_dir: str = ""
    """Run folder; empty means ``runs/<name>-<time>``."""
    name: str = ""
    """Run name (defaults to the preset or the family)."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""
    dead_grad_steps: int = 10
    """Stop the run when the gradient norm is exactly 0 this many steps in a row (a dead
    model, e.g. after a far too large learning rate); 0 never stops. A non-finite loss or
    gradient norm always stops the run, keeping a checkpoint of the last good step."""
    log_to: str = "jsonl"
    """Where metrics go, comma-separated: ``jsonl`` (``metrics.jsonl``, always), ``tensorboard``
    (``RUN/tensorboard``), ``wandb``; the last two need ``pip install "nestlearn[tracking]"``."""
    wandb_project: str = "nestlearn"
    """W&B project of ``log_to=...,wandb`` runs."""
    wandb_mode: str = ""
    """W&B mode: ``online``, ``offline`` (written under ``RUN/wandb`` for ``wandb sync``),
    ``disabled``; empty: ``$WANDB_MODE``, else W&B's default."""
    memory_stats: bool = True
    """At each validation, log the memory modules' norms, updates and inner step sizes
    (``mem/...``) of models that have memory modules (Titans, Hope, CMS)."""

    def __post_init__(self) -> None:
        for key in ("steps", "grad_accum", "log_every", "keep_last"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        for key in ("eval_every", "ckpt_every", "eval_tokens", "threads", "dead_grad_steps",
                    "mmap_threshold_kb"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0, got {self.grad_clip}")
        if not 0 <= self.seed < 1 << 40:
            raise ValueError(f"train.seed must be in [0, 2**40), got {self.seed}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"train.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be ddp or fsdp, got {self.parallel!r}")
        from nestlearn.ops.compiled import MODES

        if self.compile_mode not in MODES:
            raise ValueError(
                f"train.compile_mode must be one of {', '.join(MODES)}, got {self.compile_mode!r}"
            )
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(
                f"train.compile_mode={self.compile_mode} has no effect without train.compile=true; "
                "add train.compile=true or drop it"
            )
        from nestlearn.train.tracking import WANDB_MODES, parse_log_to

        parse_log_to(self.log_to)
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(
                f"train.wandb_mode must be online, offline, disabled or empty, got {self.wandb_mode!r}"
            )
        if (self.wandb_mode or self.wandb_project != "nestlearn") and "wandb" not in parse_log_to(
            self.log_to
        ):
            raise ValueError(
                "train.wandb_mode and train.wandb_project have no effect without wandb in "
                "train.log_to; add it (train.log_to=jsonl,wandb) or drop them"
            )


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RunConfig = field(default_factory=RunConfig)
    preset: str = ""
    """The preset the model section came from (informational)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, world_size: int = 1) -> None:
        """Cross-section checks that need more than one section (and the world size)."""
        per = self.data.batch_size / (world_size * self.train.grad_accum)
        if per != int(per) or per < 1:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} must be divisible by "
                f"world_size({world_size}) x train.grad_accum({self.train.grad_accum}); "
                f"try data.batch_size={world_size * self.train.grad_accum * max(1, round(per))}"
            )
        if self.data.seq_len > 1 and self.model.max_seq_len < self.data.seq_len:
            raise ValueError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}; raise model.max_seq_len or lower data.seq_len"
            )


# ---------------------------------------------------------------------------- parsing


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 0.0003)`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    if isinstance(value, str) and _looks_like_float(raw):
        value = float(raw)  # YAML 1.1 reads "3e-4" as a string
    return key.split("."), value


def _looks_like_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested mapping (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for p in path[:-1]:
            if p not in node or node[p] is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {text!r}: {p} is not a section")
            node = node[p]
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping (an empty file gives ``{}``).

    Raises:
        ConfigError: the file is missing, not UTF-8 text, not YAML, or not a mapping; the
            message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {p} is unreadable ({e.strerror})") from None
    if b"\0" in raw:
        raise ConfigError(
            f"config file {p} holds NUL bytes: it is a binary file, not a YAML recipe; "
            "pass a .yaml file such as configs/*.yaml"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte {e.start}); pass a YAML recipe"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Preset, then YAML file, then dotted overrides -> a validated :class:`TrainConfig`."""
    from nestlearn.models import PRESETS  # local: keeps config parsing import-light

    file_data = load_yaml(config_file) if config_file else {}
    preset = preset or file_data.get("preset") or None
    data: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, list(PRESETS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown preset {preset!r}{hint} (`nestlearn list` shows them all)")
        # a deep copy: nested overrides (model.mixer.cms.x=...) must not edit the preset itself
        data = {"model": copy.deepcopy(PRESETS[preset]), "preset": preset}
        data["data"] = {"seq_len": PRESETS[preset].get("max_seq_len", 256)}
    _deep_update(data, file_data)
    apply_overrides(data, list(overrides or []))
    return from_dict(TrainConfig, data)


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain YAML-safe data (tuples become lists)."""
    data = cfg.to_dict()
    data["optim"]["betas"] = list(data["optim"]["betas"])
    return data


CHECKSUM_PREFIX = "# nestlearn-config-sha256: "
SECTIONS = ("model", "optim", "data", "schedule", "train")


def config_text(cfg: TrainConfig) -> str:
    """The text of a run's ``config.yaml``: the YAML, then a checksum line over it.

    The checksum (a YAML comment) lets a damaged or truncated file be told from a complete
    one: :func:`load_run_config` refuses a file whose checksum line is present but differs.
    """
    body = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    return body + CHECKSUM_PREFIX + hashlib.sha256(body.encode("utf-8")).hexdigest() + "\n"


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write_text(path, config_text(cfg))


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a run's ``config.yaml``, checked for damage.

    A file written by :func:`dump_config` ends with a checksum line; when that line is present
    the YAML above it must match it. A file without one (older runs) must hold every section
    and the ``preset`` key that every version wrote last. Anything else raises
    :class:`ConfigError` naming the file: a damaged config is never replaced by defaults.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} is missing; is {p.parent} a run folder made by `nestlearn train`?")
    fix = (
        f"{p} is damaged ({{}}); the run's checkpoints hold a copy of the config, which "
        "`nestlearn train --resume` and `nestlearn eval` use. Without a checkpoint, start the "
        "run again (--force replaces it)"
    )
    try:
        data = load_yaml(p)
    except ConfigError as e:
        raise ConfigError(fix.format(str(e).replace(f"config file {p} is ", ""))) from None
    text = p.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and lines[-1].startswith(CHECKSUM_PREFIX):
        body = "".join(lines[:-1])
        got = hashlib.sha256(body.encode("utf-8")).hexdigest()
        if lines[-1][len(CHECKSUM_PREFIX) :].strip() != got:
            raise ConfigError(
                fix.format("its content does not match its checksum line: truncated or edited; "
                           "pass changes as overrides to --resume instead of editing the file")
            )  # fmt: skip
    elif not data:
        raise ConfigError(fix.format("it is empty"))
    elif "preset" not in data:  # written last by every dump_config: a cut-off file lacks it
        raise ConfigError(fix.format("it ends early: no checksum line and no final preset key"))
    missing = [s for s in SECTIONS if not isinstance(data.get(s), dict)]
    if missing:
        raise ConfigError(fix.format(f"no {', '.join(missing)} section"))
    return data
