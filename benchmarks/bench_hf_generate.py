"""Decode speed of ``transformers`` ``generate()`` against nestlearn's own decode loop
(timing only; prints JSON).

For each preset, one randomly initialised model is wrapped by
:class:`nestlearn.hf.NestlearnForCausalLM` (shared parameters) and both loops decode greedily
from the same prompt: ``nestlearn.models.generation.generate(temperature=0)`` and
``model.generate(do_sample=False)``. Calls alternate (same background load), each is timed
``--reps`` times. Reported: tokens/s of the best call of each, their ratio
``native_tok_s / hf_tok_s`` (1.0 = generate() is as fast as the native loop; the target is
<= 1.2), and the median over reps of the paired ratio (time of generate() / time of the
native call just before it), which is steadier on a shared machine. Both include the prompt's
prefill; the outputs are checked to be equal.

    .venv/bin/python benchmarks/bench_hf_generate.py --threads 1
    .venv/bin/python benchmarks/bench_hf_generate.py --presets titans-tiny --new 256
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="transformer-tiny,titans-tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="tokens decoded")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from nestlearn.hf import NestlearnForCausalLM
    from nestlearn.models import build_model, preset_config
    from nestlearn.models.generation import generate

    hf_logging.set_verbosity_error()
    rows = []
    for preset in args.presets.split(","):
        lm = build_model(preset_config(preset, vocab_size=259), seed=0).eval()
        hf = NestlearnForCausalLM.from_language_model(lm).eval()
        idx = torch.randint(
            0, 259, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)
        )

        def native(lm=lm, idx=idx) -> torch.Tensor:
            return generate(lm, idx, args.new, temperature=0)[0]

        def via_hf(hf=hf, idx=idx) -> torch.Tensor:
            return hf.generate(idx, max_new_tokens=args.new, do_sample=False)

        same = torch.equal(native(), via_hf())  # also the warm-up
        t_native, t_hf = [], []
        for _ in range(args.reps):
            for fn, times in ((native, t_native), (via_hf, t_hf)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn()
                times.append(time.perf_counter() - t0)
        tok = args.batch * args.new
        native_tok_s, hf_tok_s = tok / min(t_native), tok / min(t_hf)
        paired = sorted(h / n for h, n in zip(t_hf, t_native))
        rows.append(
            {
                "preset": preset,
                "threads": args.threads,
                "batch": args.batch,
                "prompt": args.prompt,
                "new_tokens": args.new,
                "native_tok_s": round(native_tok_s, 1),
                "hf_generate_tok_s": round(hf_tok_s, 1),
                "ratio_native_over_hf": round(native_tok_s / hf_tok_s, 3),
                "median_paired_ratio": round(paired[len(paired) // 2], 3),
                "outputs_equal": same,
            }
        )
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
