"""Parity with negative eigenvalues (issue 15): DeltaNet's ``allow_neg_eigval`` and Hope's ``max_lr``.

A linear recurrence ``S_t = S_{t-1} (I - beta_t k_t k_t^T) + ...`` with ``||k|| = 1`` tracks
parity at every length only if its transition can have a negative eigenvalue (Grazzi et al.,
ICLR 2025, arXiv 2411.12537). DeltaNet's ``beta = sigmoid(.)`` keeps ``1 - beta`` in [0, 1], and
Hope's strong-write rule keeps its output layer's step ``theta / max(1, ||z||^2) <= max_lr = 0.5``.
This script trains the formal-language recipe (``default_recipe(LANG)``, seed 0) with

* ``deltanet SCALE``: DeltaNet with ``beta`` multiplied by ``SCALE``: 2 is the library option
  ``model.mixer.allow_neg_eigval=true`` (eigenvalues in [-1, 1]); other scales wrap
  ``DeltaNetMixer._delta``;
* ``hope MAX_LR``: Hope with ``model.mixer.max_lr = MAX_LR`` (2: the normalised step may reach 2),

and prints Bin0 / Bin1 (%), the steps taken and the wall time.

    python experiments/negative_eigenvalues.py deltanet 2 parity
    python experiments/negative_eigenvalues.py hope 2 parity
"""

from __future__ import annotations

import argparse
import json
import time

from nestlearn.layers.deltanet import DeltaNetMixer
from nestlearn.studies.formal import train_formal
from nestlearn.studies.recall import default_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family", choices=["deltanet", "hope"])
    p.add_argument("value", type=float, help="deltanet: beta scale; hope: max_lr")
    p.add_argument("language", nargs="?", default="parity")
    a = p.parse_args()
    mixer = {}
    if a.family == "deltanet" and a.value == 2.0:
        mixer = {"allow_neg_eigval": True}
    elif a.family == "deltanet" and a.value != 1.0:
        inner = DeltaNetMixer._delta

        def scaled(self, q, k, v, beta, g, S0, act):  # noqa: ANN001, ANN202
            return inner(self, q, k, v, a.value * beta, g, S0, act)

        DeltaNetMixer._delta = scaled
    elif a.family == "hope":
        mixer = {"max_lr": a.value}
    cfg = default_recipe(a.language, family=a.family, mixer=mixer)
    t0 = time.time()
    res = train_formal(a.language, cfg)
    print(f"{a.family} {a.value:g} {a.language}: Bin0 {100 * res.bin0:.1f} Bin1 "
          f"{100 * res.bin1:.1f} steps {res.steps} (kept {res.extra.get('best_step')}) "
          f"wall {time.time() - t0:.0f} s")  # fmt: skip
    print(json.dumps(res.extra.get("valid_history")))


if __name__ == "__main__":
    main()
