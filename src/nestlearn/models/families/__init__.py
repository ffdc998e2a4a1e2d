"""Block families. Importing this package registers every family and its presets.

Every module in this folder is imported, so adding a family is adding one file that calls
``register_family`` (and ``register_preset``) at import time.
"""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
