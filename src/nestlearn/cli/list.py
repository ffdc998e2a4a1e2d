"""``nestlearn list``: model families and presets, with parameter counts."""

from __future__ import annotations

import argparse

COMMAND = "list"
HELP = "model families and presets"
DESCRIPTION = None


def add_args(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from nestlearn.models import FAMILIES, PRESET_NOTES, PRESETS, build_model, preset_config
    from nestlearn.utils.tables import format_table

    print("families:")
    print(
        format_table(
            ["family", "decode", "description"],
            [
                [f.name, "yes" if f.supports_decode else "no", f.description]
                for f in FAMILIES.values()
            ],
        )
    )
    print(
        "\npresets (parameters at the preset's vocabulary; 'tok' = set by the tokenizer, shown at 256):"
    )
    rows = []
    for name in PRESETS:
        cfg = preset_config(name)
        vocab = cfg.vocab_size or 256
        cfg.vocab_size = vocab
        n = build_model(cfg, meta=True).num_params()
        rows.append(
            [
                name,
                cfg.family,
                f"{n / 1e6:.1f}M",
                vocab if PRESETS[name].get("vocab_size") else "tok",
                PRESET_NOTES[name],
            ]
        )
    print(format_table(["preset", "family", "params", "vocab", "note"], rows))
    return 0
