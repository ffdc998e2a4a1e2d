"""Benchmark harness: throughput, memory and MFU of model families, measured in one process.

Axis legend: B batch, T sequence length, V vocabulary, C decode context length.

``nestlearn bench`` (its flags and output: :mod:`nestlearn.cli.bench`) and
``benchmarks/bench_models.py`` measure, for each ``--model``, in this order and in one process:

1. the machine's matmul peak (square ``n x n`` matmuls in the run's dtype, best of a few; at
   the default float32 this is the fp32 peak), once per run and shared by every model;
2. training throughput: forward + cross-entropy + backward + AdamW step on ``[B, T]`` random
   tokens, median step time after warm-up;
3. forward-only throughput (``torch.no_grad``), median after warm-up;
4. decode throughput at each context length ``C`` where the family supports decoding: prefill
   ``C`` tokens into a fresh state, then time single-token steps, median after warm-up;
5. peak memory over steps 2-4 (CPU: the process's peak RSS, ``VmHWM``, reset per model via
   ``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``).

``flops_per_token`` is :meth:`LanguageModel.flops_per_token` at ``T``: *training* FLOPs per
token (3 x forward, matmuls and attention only), so ``gflops = train_tokens_per_s *
flops_per_token / 1e9`` is the achieved rate of the train measurement and
``mfu = gflops / peak_gflops``. Ratios (``*_vs_first``) divide by the first model listed.
Timings are only compared within one run; nothing here asserts on absolute time.
"""

from nestlearn.bench.harness import (
    DTYPES,
    EXTRA_FIELDS,
    PREFILL_SEGMENT,
    RATIO_FIELDS,
    SPEC_FIELDS,
    add_ratios,
    bench_model,
    bench_models,
    measure_matmul_peak,
)
from nestlearn.bench.spec import (
    DEFAULT_DIM,
    DEFAULT_LAYERS,
    DEFAULT_VOCAB,
    parse_model_spec,
    resolve_config,
)

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_LAYERS",
    "DEFAULT_VOCAB",
    "DTYPES",
    "EXTRA_FIELDS",
    "PREFILL_SEGMENT",
    "RATIO_FIELDS",
    "SPEC_FIELDS",
    "add_ratios",
    "bench_model",
    "bench_models",
    "measure_matmul_peak",
    "parse_model_spec",
    "resolve_config",
]
