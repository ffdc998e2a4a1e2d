"""Worker for the seed tests: train every family for two steps with one seed, print JSON.

Usage: python tests/train/seed_worker.py SEED OUT_DIR [FAMILY ...]

For each family (default: every registered one) it prints the sha256 of the initial weights,
of the initial weights of the modules with their own generators (memories, convs, decay rates,
persistent tokens), and the exact step-1 and step-2 training losses (``float.hex``). Run it in
two processes with the same seed: everything must match bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from nestlearn.models import FAMILIES  # noqa: E402
from nestlearn.train import Trainer, resolve_config  # noqa: E402
from nestlearn.train.batches import ArrayTokens  # noqa: E402
from tests.conftest import ByteTok, source_text_tokens  # noqa: E402

PRESET = {f: f"{f}-tiny" for f in FAMILIES}
PRESET["transformer-cms"] = "transformer-tiny"  # no preset of its own: same shape, CMS FFN
PRESET["nested"] = "nested-demo"  # the generic MIRAS family: its demo spec


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def own_generator_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters of modules that draw their init from their own generator (``init_seed``)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "init_seed", None), int):
            for pn, p in mod.named_parameters(recurse=False):
                out[f"{name}.{pn}"] = p
    return out


def run(family: str, seed: int, out: Path) -> dict[str, str]:
    over = [
        f"model.family={family}",
        "model.n_layers=2",
        "model.dim=64",
        "model.n_heads=2",
        "model.max_seq_len=64",
        "data.seq_len=64",
        "data.batch_size=4",
        "train.steps=2",
        "train.eval_every=0",
        "train.eval_tokens=256",
        "train.progress=false",
        "train.threads=1",
        f"train.seed={seed}",
    ]
    cfg = resolve_config(PRESET[family], None, over)
    arr = source_text_tokens()
    data = (ByteTok(), ArrayTokens(arr[:60000]), ArrayTokens(arr[60000:70000]))
    trainer = Trainer(cfg, run_dir=out / family, data=data)
    weights = _digest(trainer.model.state_dict())
    own = _digest(own_generator_params(trainer.model))
    res = trainer.fit()
    return {
        "weights": weights,
        "own": own,
        "n_own": len(own_generator_params(trainer.model)),
        "loss1": res.losses[0].hex(),
        "loss2": res.losses[1].hex(),
    }


def main() -> None:
    seed = int(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp())
    families = sys.argv[3:] or sorted(FAMILIES)
    print(json.dumps({f: run(f, seed, out / f"seed{seed}") for f in families}))


if __name__ == "__main__":
    main()
