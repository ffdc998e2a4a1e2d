"""Every package's floor: what it may import. Imports flow one way (STYLE.md, README "Layout").

    utils                         no nestlearn imports at all
    ops <- memory <- layers <- models <- nested      the model code
    optim                         parameter groups only
    data                          no model code
    eval                          scorers: models + data          (never train)
    train                         the loop: models + optim + data (never eval)
    bench                         timing: models + optim
    hf, pretrained                integrations: models + data + train (they read / write runs)
    studies                       train then score: train + eval + pretrained
    cli                           the command: anything

``eval`` and ``train`` are siblings: the trainer's validation scorer is
``nestlearn.train.validation``, and the scorers that need a run folder opened are called from
``studies`` or ``cli``. Every module and package directly under ``src/nestlearn`` has a rule
here, and the allowed graph has no cycle, so the imports found have none either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

PKG = Path(__file__).resolve().parents[1] / "src" / "nestlearn"

MODEL_CODE = {"ops", "memory", "layers", "models"}

# package (or top-level module) -> the nestlearn packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "ops": {"utils"},
    "memory": {"ops", "utils"},
    "layers": {"memory", "ops", "utils"},
    "models": {"layers", "memory", "ops", "utils"},
    "nested": MODEL_CODE | {"utils"},
    "optim": {"utils"},
    "data": {"utils"},
    "eval": MODEL_CODE | {"data", "utils"},
    "train": MODEL_CODE | {"optim", "data", "utils"},
    "bench": MODEL_CODE | {"optim", "utils"},
    "hf": MODEL_CODE | {"data", "train", "utils"},
    "pretrained": MODEL_CODE | {"optim", "data", "train", "utils"},
    "studies": MODEL_CODE | {"optim", "data", "eval", "train", "pretrained", "utils"},
    "cli": MODEL_CODE
    | {"nested", "optim", "data", "eval", "train", "bench", "hf", "pretrained", "studies", "utils"},
    # the package root and its private modules
    "_hf_autoregister": {"hf"},  # imports nestlearn.hf when transformers is imported
    "__main__": {"cli"},  # python -m nestlearn
    "__init__": {"_hf_autoregister"},
}


def _units() -> list[str]:
    """Packages and modules directly under src/nestlearn."""
    out = []
    for p in sorted(PKG.iterdir()):
        if p.is_dir() and (p / "__init__.py").exists():
            out.append(p.name)
        elif p.suffix == ".py":
            out.append(p.stem)
    return out


def _files(unit: str) -> list[Path]:
    path = PKG / unit
    return sorted(path.rglob("*.py")) if path.is_dir() else [PKG / f"{unit}.py"]


def _imports(path: Path) -> set[str]:
    """The nestlearn packages or top-level modules that ``path`` imports (anywhere in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    units = set(_units())
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path.relative_to(PKG)}: relative import; write nestlearn.<package>")
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "nestlearn":  # from nestlearn import X: X a unit, or __version__
                names = [a.name for a in node.names if a.name in units]
            elif node.module.startswith("nestlearn."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("nestlearn.")]
        found.update(names)
    return found


def test_every_unit_has_a_floor():
    missing = sorted(set(_units()) - set(ALLOWED))
    assert not missing, f"add a rule to ALLOWED for {missing}"
    unknown = {d for deps in ALLOWED.values() for d in deps} - set(ALLOWED)
    assert not unknown, f"rules name packages with no rule of their own: {sorted(unknown)}"


def test_floors_have_no_cycle():
    """The allowed graph is a DAG (so no two packages can import each other, at any distance)."""
    order: list[str] = []
    todo = {u: set(deps) for u, deps in ALLOWED.items()}
    while todo:
        ready = sorted(u for u, deps in todo.items() if not deps - set(order))
        assert ready, f"the floors form a cycle among {sorted(todo)}"
        order += ready
        for u in ready:
            del todo[u]


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_import_direction(unit):
    bad = []
    for f in _files(unit):
        hit = _imports(f) - ALLOWED[unit] - {unit}
        if hit:
            bad.append(f"{f.relative_to(PKG)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((PKG.parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_resolve(path):
    from nestlearn.train.config import resolve_config

    data = yaml.safe_load(path.read_text())
    cfg = resolve_config(None, path, [])
    assert cfg.train.steps > 0 and isinstance(data, dict)
