"""M3 against AdamW and Muon on a small vision transformer (arXiv 2512.24695 §9.7, Fig. 11 and
Fig. 12 at CPU size): the ``nestlearn vit-optim`` study.

* :mod:`~nestlearn.studies.vit_optim.model`: :class:`TinyViT` for 8 x 8 grey images.
* :mod:`~nestlearn.studies.vit_optim.train`: one (optimizer, lr, seed) run and the step timing.
* :mod:`~nestlearn.studies.vit_optim.study`: tune on a grid, repeat over seeds, resume.
* :mod:`~nestlearn.studies.vit_optim.report`: ``results.md``, ``results.json``, ``curves.png``.
"""

from nestlearn.studies.vit_optim.model import TinyViT, ViTConfig
from nestlearn.studies.vit_optim.study import (
    DEFAULT_GRID,
    CellStore,
    StudySettings,
    run_study,
    select_lr,
)
from nestlearn.studies.vit_optim.train import (
    METHODS,
    TrainSettings,
    digits_tensors,
    make_optimizer,
    time_optimizer_steps,
    train_cell,
)

__all__ = [
    "DEFAULT_GRID",
    "METHODS",
    "CellStore",
    "StudySettings",
    "TinyViT",
    "TrainSettings",
    "ViTConfig",
    "digits_tensors",
    "make_optimizer",
    "run_study",
    "select_lr",
    "time_optimizer_steps",
    "train_cell",
]
