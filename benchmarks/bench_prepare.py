"""Throughput and peak memory of ``nestlearn prepare`` on a parquet file, beside the tokenizer's ceiling.

Builds test input from the embedded corpus (cut into ~4 kB documents, like web text, and repeated
until the parquet file reaches ``--size-mb``) under ``--tmp``, then measures in one run:

* ``ceiling``: a single-process ``tokenizers`` ``encode_batch`` loop over the same documents held in
  memory (batches of 1024), no reading or writing: what one process gets out of the tokenizer;
* ``prepare``: ``prepare(parquet, out, tokenizer, workers=N)`` end to end: check the file (read,
  hash, validate), read, tokenize on N processes, write shards; also the tokenizing phase alone;
* the peak resident memory of prepare's whole process tree (this process + workers), sampled
  from ``/proc`` every 50 ms, and ``ru_maxrss`` of the main process.

Prints one JSON object; throughputs are reported as ratios to the ceiling measured in the same run.
The test data and the output are deleted afterwards unless ``--keep``::

    python benchmarks/bench_prepare.py --size-mb 200 --workers 2
    python benchmarks/bench_prepare.py --size-mb 2048 --workers 2 --skip-ceiling   # memory check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def _docs() -> list[str]:
    from nestlearn.data.corpus import corpus_documents

    return [d[i : i + 4096] for _, d in corpus_documents("train") for i in range(0, len(d), 4096)]


def _write_parquet(path: Path, size_mb: int, compression: str) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs()
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    n_rows, n_bytes = 0, 0
    with pq.ParquetWriter(path, table.schema, compression=compression) as w:
        per = sum(len(d.encode()) for d in docs)
        while not path.exists() or path.stat().st_size < size_mb << 20:
            w.write_table(table, row_group_size=2048)
            n_rows += len(docs)
            n_bytes += per
    return n_rows, n_bytes


def _tree_rss(pid: int) -> int:  # noqa: C901
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._halt = 0, threading.Event()
        self.base = _tree_rss(os.getpid())  # this process: not part of the measurement

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()) - self.base)
            time.sleep(0.05)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def _ceiling(tokenizer: str, seconds: float) -> dict[str, float]:
    from nestlearn.data.tokenizers import get_tokenizer

    tok = get_tokenizer(tokenizer)
    docs = _docs()
    inner = getattr(tok, "_tok", None)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for i in range(0, len(docs), 1024):
            if inner is not None:
                encs = inner.encode_batch(docs[i : i + 1024], add_special_tokens=False)
                n += sum(len(e.ids) for e in encs)
            else:
                n += sum(len(a) for a in tok.encode_arrays(docs[i : i + 1024]))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "tokens": n,
        "seconds": dt,
        "cpu_s": cpu,
        "tokens_per_s": n / dt,
        "tokens_per_cpu_s": n / cpu,
    }


_PREPARE = """
import json, resource, sys, time
from nestlearn.data.prepare import collect_sources, prepare_sources
from nestlearn.data.tokenizers import get_tokenizer
t0 = time.perf_counter()
sources = collect_sources([sys.argv[1]])
t1 = time.perf_counter()
meta = prepare_sources(sources, sys.argv[2], get_tokenizer(sys.argv[3]), progress=False,
                       workers=int(sys.argv[4]))
t2 = time.perf_counter()
print(json.dumps({"tokens": meta["n_tokens"], "check_s": t1 - t0, "tokenize_write_s": t2 - t1,
                  "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s_main": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                  "cpu_s_workers": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=200, help="parquet file size to build")
    p.add_argument("--tokenizer", default="bpe-8192")
    p.add_argument("--workers", type=int, default=0, help="0: one per CPU")
    p.add_argument("--compression", default="none", help="parquet compression (none, snappy, zstd)")
    p.add_argument("--tmp", default="/tmp/nestlearn-bench-prepare")
    p.add_argument("--skip-ceiling", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the test data and the output")
    args = p.parse_args(argv)

    from nestlearn.data.encode import default_workers

    tmp = Path(args.tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    workers = args.workers or default_workers()
    try:
        src = tmp / "input.parquet"
        n_rows, n_text = _write_parquet(src, args.size_mb, args.compression)
        result: dict[str, object] = {
            "input": {
                "file_mb": round(src.stat().st_size / 2**20, 1),
                "text_mb": round(n_text / 2**20, 1),
                "documents": n_rows,
                "compression": args.compression,
            },
            "tokenizer": args.tokenizer,
            "workers": workers,
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg(),
        }
        if not args.skip_ceiling:
            result["ceiling_encode_batch"] = _ceiling(args.tokenizer, 20.0)
        # prepare runs in a fresh process, so its memory is its own; this one samples the tree
        sampler = _Sampler()
        sampler.start()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _PREPARE,
                str(src),
                str(tmp / "out"),
                args.tokenizer,
                str(workers),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peak = sampler.stop()
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
        n = timing["tokens"]
        t_all = timing["check_s"] + timing["tokenize_write_s"]
        result["prepare"] = {
            **timing,
            "end_to_end_tokens_per_s": n / t_all,
            "tokenize_write_tokens_per_s": n / timing["tokenize_write_s"],
            "tokens_per_cpu_s": n / (timing["cpu_s_main"] + timing["cpu_s_workers"]),
            "peak_rss_tree_mb": round(peak / 2**20, 1),
        }
        if "ceiling_encode_batch" in result:
            ceil = result["ceiling_encode_batch"]["tokens_per_s"]  # type: ignore[index]
            result["ratio_end_to_end_to_ceiling"] = n / t_all / ceil
            # load-independent: work per CPU-second against the tokenizer's own
            per_cpu = result["ceiling_encode_batch"]["tokens_per_cpu_s"]  # type: ignore[index]
            result["ratio_tokens_per_cpu_s_to_ceiling"] = (
                result["prepare"]["tokens_per_cpu_s"] / per_cpu
            )  # type: ignore[index]
        result["load_after"] = os.getloadavg()
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
