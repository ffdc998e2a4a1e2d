"""nestlearn: Nested Learning (arXiv 2512.24695) in PyTorch.

Hope, Titans neural memory, the Continuum Memory System, deep optimizers, and the
baselines they are compared against, on one model skeleton.
"""

__version__ = "0.1.0"
