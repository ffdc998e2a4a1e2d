"""Register nestlearn's model types with transformers the moment transformers is imported.

``import nestlearn`` calls :func:`install`. It must stay cheap and must not import torch or
transformers, so instead of importing :mod:`nestlearn.hf` it puts a one-shot finder on
``sys.meta_path``: when ``transformers`` is first imported, the finder lets the normal import
run and then imports :mod:`nestlearn.hf`, which registers ``nestlearn-<family>`` with
``AutoConfig`` / ``AutoModelForCausalLM``. Without transformers installed nothing ever
happens. If transformers is already imported, registration happens at once.

This module imports only ``sys`` (logging and typing alone would cost ~20 ms).
"""

from __future__ import annotations

import sys

_TARGET = "transformers"


def _register() -> None:
    try:
        import nestlearn.hf  # noqa: F401  (registers on import)
    except Exception as e:  # never break the user's `import transformers`
        import logging

        logging.getLogger("nestlearn").warning(
            "could not register nestlearn models with transformers (%s: %s); "
            "`import nestlearn.hf` shows the full error",
            type(e).__name__,
            e,
        )


class _Loader:
    """Wraps transformers' own loader: run it, then register."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def create_module(self, spec: object) -> object:
        return self._inner.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._inner.exec_module(module)
        # leave no trace of the wrapper on the module
        module.__loader__ = self._inner
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner
        _register()


class _Finder:
    """A ``sys.meta_path`` entry that only ever answers for ``transformers``, once."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != _TARGET:
            return None
        _uninstall()
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def _uninstall() -> None:
    try:
        sys.meta_path.remove(_FINDER)
    except ValueError:
        pass


def install() -> None:
    """Register now if transformers is imported, else when it is (no-op if never)."""
    if _TARGET in sys.modules:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
