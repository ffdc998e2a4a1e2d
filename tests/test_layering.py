"""Imports flow one way: ops <- memory <- layers <- models <- train/eval/continual <- cli (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

PKG = Path(__file__).resolve().parents[1] / "src" / "nestlearn"

# package -> packages it must never import
FORBIDDEN = {
    "ops": ["memory", "layers", "models", "train", "eval", "cli", "commands", "data", "optim", "hf"],
    "memory": ["layers", "models", "train", "eval", "cli", "commands", "data", "hf"],
    "layers": ["models", "train", "eval", "cli", "commands", "data", "hf"],
    "models": ["train", "eval", "cli", "commands", "data", "hf"],
    "optim": ["models", "layers", "memory", "train", "eval", "cli", "commands", "data", "hf"],
    "data": ["models", "layers", "memory", "ops", "train", "cli", "commands", "hf"],
    # the transformers integration sits beside train/eval (export reads runs)
    "hf": ["cli", "commands"],
    # GGUF loading and level stacking sit beside train/eval (they write run folders)
    "pretrained": ["cli", "commands"],
    # continual-learning benchmarks use models, train, eval and pretrained; only the CLI uses them
    "continual": ["cli", "commands", "hf"],
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nestlearn."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nestlearn."):
                    found.add(a.name.split(".")[1])
    return found


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_import_direction(pkg):
    bad = []
    for f in sorted((PKG / pkg).rglob("*.py")):
        hit = _imports(f) & set(FORBIDDEN[pkg])
        if hit:
            bad.append(f"{f.relative_to(PKG)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((PKG.parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_resolve(path):
    from nestlearn.train.config import resolve_config

    data = yaml.safe_load(path.read_text())
    cfg = resolve_config(None, path, [])
    assert cfg.train.steps > 0 and isinstance(data, dict)
