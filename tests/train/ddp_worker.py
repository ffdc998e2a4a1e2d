"""Worker for the DDP test: run under torchrun, train on the test bytes, dump losses (rank 0).

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py OUT [k=v ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nestlearn.train import Trainer, resolve_config  # noqa: E402
from nestlearn.train.batches import ArrayTokens  # noqa: E402
from nestlearn.train.distributed import cleanup_distributed  # noqa: E402
from tests.conftest import ByteTok, source_text_tokens  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    cfg = resolve_config("transformer-tiny", None, sys.argv[2:])
    arr = source_text_tokens()
    cut = int(len(arr) * 0.9)
    data = (ByteTok(), ArrayTokens(arr[:cut]), ArrayTokens(arr[cut:]))
    trainer = Trainer(cfg, run_dir=out / "run", data=data)
    res = trainer.fit()
    if trainer.dist.is_main:
        (out / "result.json").write_text(
            json.dumps(
                {"losses": res.losses, "final": res.final_eval, "world": trainer.dist.world_size}
            )
        )
    cleanup_distributed()


if __name__ == "__main__":
    main()
