"""Every module of the package imports (a moved helper breaks an importer at once, not at use).

Modules behind an optional dependency may refuse with an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import nestlearn

OPTIONAL = ("lm_eval", "lm-eval", "gguf", "sklearn", "scikit-learn", "transformers", "triton")
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(nestlearn.__path__, "nestlearn.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:  # only a missing optional dependency may stop it
        if not any(dep in str(e) for dep in OPTIONAL):
            raise
