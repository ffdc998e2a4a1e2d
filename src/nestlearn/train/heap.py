"""The C heap's policy for large blocks on CPU runs (Linux with glibc).

glibc serves a request above its *mmap threshold* with its own mapping, which returns to the
system when freed; smaller ones come from the heap, which keeps freed memory for reuse. The
threshold starts at 128 KiB and, by default, rises to the size of every mapped block that is
freed, up to 32 MiB. A training step frees many blocks of a few MiB (fast weights, per-chunk
activations), so after the first step nearly every tensor comes from the heap, which then
fragments: hope-tiny at 16 x 256 peaked at 3.8 GB resident for 1.9 GB of live tensors
(``docs/benchmarks.md``, "Training memory"). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``,
which also turns the rising rule off) keeps the resident memory near the live tensors, at the
cost of a system call and fresh pages per large block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["set_mmap_threshold"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # <malloc.h>


def set_mmap_threshold(nbytes: int) -> bool:
    """Serve every C heap request of at least ``nbytes`` with its own mapping (glibc only).

    Returns whether the policy was set (``False`` off Linux, on another C library, or for
    ``nbytes <= 0``, which leaves glibc's rising default). Process-wide; call it once, before
    the work.
    """
    if nbytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no glibc mallopt; the heap keeps its default policy")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
