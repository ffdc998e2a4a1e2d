"""Parallel, order-preserving tokenization of document payloads for ``nestlearn prepare``.

:class:`PayloadEncoder` turns payloads (see :mod:`nestlearn.data.readers`) into token ids:
in this process when ``workers <= 1``, otherwise in a pool of ``workers`` processes (spawned,
so nothing of the parent's threads or state is inherited), each encoding whole payloads with
the tokenizer's batched encoder on one thread. Results come back in submission order and at
most ``2 * workers`` payloads are in flight, so the output is the same for any worker count and
memory stays bounded however large the input.

Each result is ``(ids, counts, n_bytes)``: the payload's ids with ``eos_id`` after every
non-empty document, the number of ids of each document (eos included; 0 for an empty one) and
the UTF-8 bytes of each document's text.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np

from nestlearn.data.readers import payload_texts
from nestlearn.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

logger = logging.getLogger(__name__)

K = TypeVar("K")
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def default_workers() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity`` where it exists)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def encode_payload(
    tok: Tokenizer, kind: str, payload: Any, text_key: str, path: str, dtype: np.dtype
) -> Encoded:
    """Ids (eos after each non-empty document), ids per document and bytes per document."""
    texts = payload_texts(kind, payload, text_key, path)
    nonempty = [t for t in texts if t]
    arrays = tok.encode_arrays(nonempty, dtype=dtype) if nonempty else []
    counts = np.zeros(len(texts), dtype=np.int64)
    n_bytes = np.zeros(len(texts), dtype=np.int64)
    out = np.empty(sum(len(a) for a in arrays) + len(arrays), dtype=dtype)
    pos, k = 0, 0
    for j, t in enumerate(texts):
        if not t:
            continue
        a = arrays[k]
        k += 1
        out[pos : pos + len(a)] = a
        out[pos + len(a)] = tok.eos_id
        pos += len(a) + 1
        counts[j] = len(a) + 1
        n_bytes[j] = len(t) if t.isascii() else len(t.encode("utf-8"))
    return out, counts, n_bytes


def _tokenizer_spec(tok: Tokenizer) -> tuple[str, ...]:
    """How a worker process rebuilds ``tok``."""
    if isinstance(tok, ByteTokenizer):
        return ("byte",)
    if isinstance(tok, HFTokenizer):
        return ("hf", str(tok.path), tok.name)
    return ("name", tok.name)


def _rebuild(spec: tuple[str, ...]) -> Tokenizer:
    if spec[0] == "byte":
        return ByteTokenizer()
    if spec[0] == "hf":
        return HFTokenizer(spec[1], name=spec[2])
    return get_tokenizer(spec[1])


_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int) -> None:
    """Exit as soon as the parent process ``parent`` is gone (e.g. SIGKILLed): no orphaned workers.

    ``parent`` is the pid the parent passed in, not ``os.getppid()`` read here: a parent killed
    before this worker started has already handed it to init, and a pid read now would be init's,
    so the watch below would never fire (an orphan holding the parent's pipes forever).
    """
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(
    spec: tuple[str, ...], sha256: str, dtype: str, text_key: str, parent: int
) -> None:
    # one thread per worker: the pool is the parallelism (and rayon threads would oversubscribe)
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _exit_with_parent(parent)
    tok = _rebuild(spec)
    if tok.sha256 != sha256:
        raise RuntimeError(f"tokenizer {tok.name} changed on disk while preparing; run it again")
    _WORKER.update(tok=tok, dtype=np.dtype(dtype), text_key=text_key)


def _work(item: tuple[str, Any, str]) -> Encoded:
    kind, payload, path = item
    return encode_payload(
        _WORKER["tok"], kind, payload, _WORKER["text_key"], path, _WORKER["dtype"]
    )


class PayloadEncoder:
    """Encode ``(key, (kind, payload, path))`` items in order, on ``workers`` processes.

    Use as a context manager; :meth:`map` yields ``(key, (ids, counts, n_bytes))``.
    """

    def __init__(self, tok: Tokenizer, dtype: np.dtype, text_key: str, workers: int = 1) -> None:
        self.tok, self.dtype, self.text_key = tok, np.dtype(dtype), text_key
        self.workers = int(workers) if workers > 0 else default_workers()
        self._pool: Any = None

    def __enter__(self) -> PayloadEncoder:
        if self.workers > 1:
            # spawn: nothing of this process (threads, locks, torch) is inherited; an executor,
            # not a Pool: a worker that dies breaks it instead of being restarted forever
            spec = _tokenizer_spec(self.tok)
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(spec, self.tok.sha256, self.dtype.str, self.text_key, os.getpid()),
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @staticmethod
    def _get(fut: Any) -> Encoded:
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise RuntimeError(
                "a tokenizing worker process died (out of memory, killed, or it could not start: "
                "a script that calls prepare(..., workers>1) must do so under "
                "`if __name__ == '__main__':`); run again, or with workers=1"
            ) from e

    def map(self, items: Iterable[tuple[K, tuple[str, Any, str]]]) -> Iterator[tuple[K, Encoded]]:
        """Results in the order of ``items``; reads ahead at most ``2 * workers`` items."""
        if self._pool is None:
            for key, (kind, payload, path) in items:
                yield key, encode_payload(self.tok, kind, payload, self.text_key, path, self.dtype)
            return
        pending: collections.deque[tuple[K, Any]] = collections.deque()
        limit = 2 * self.workers
        for key, item in items:
            pending.append((key, self._pool.submit(_work, item)))
            if len(pending) >= limit:
                k, fut = pending.popleft()
                yield k, self._get(fut)
        while pending:
            k, fut = pending.popleft()
            yield k, self._get(fut)
