"""The CPU thread count for a busy machine (issue 16).

OpenMP worker threads wait for each other at the end of every parallel op. When another process
holds a core, a waiting thread spins while its peer is descheduled, and a step made of thousands
of small ops slows down many times over: hope-tiny training at 4 x 512 ran 3.9x slower with one
competing busy loop on 2 threads (``benchmarks/bench_busy.py``). One thread per free core keeps
the slowdown to what the lost core costs. ``OMP_WAIT_POLICY=PASSIVE`` removes the spinning too,
but it halved the idle speed (932 -> 525 tok/s), so it is not used.
"""

from __future__ import annotations

import os
import time

__all__ = ["auto_threads", "available_cores", "busy_cores"]


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def busy_cores(window_s: float = 0.1) -> float | None:
    """Cores kept busy by other processes now: the machine's CPU time used during a short
    sleep of this process (Linux ``/proc/stat``; elsewhere the 1-minute load average; ``None``
    if neither exists)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(window_s)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    if t1 <= t0:
        return 0.0
    return (1.0 - (i1 - i0) / (t1 - t0)) * (os.cpu_count() or 1)


def auto_threads(current: int, busy: float | None = None, cores: int | None = None) -> int:
    """Threads to use: ``current`` (torch's default) minus the cores other processes keep busy
    (:func:`busy_cores`, measured now unless given), and at least 1."""
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return current
    cores = available_cores() if cores is None else cores
    return max(1, min(current, cores - int(busy + 0.5)))
