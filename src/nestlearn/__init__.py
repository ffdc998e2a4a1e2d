"""nestlearn: Nested Learning (arXiv 2512.24695) in PyTorch.

Hope, Titans neural memory, the Continuum Memory System, deep optimizers, and the
baselines they are compared against, on one model skeleton.
"""

__version__ = "0.1.0"

# Hugging Face: register our model types with transformers when (if) it is imported.
# Cheap: no torch or transformers import here (see nestlearn/_hf_autoregister.py).
from nestlearn import _hf_autoregister

_hf_autoregister.install()
del _hf_autoregister
