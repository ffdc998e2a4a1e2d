"""The CLI's thread count on a busy machine (issue 16): one thread per core no other process
keeps busy, measured at start; a count the user set wins."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from nestlearn import cli
from nestlearn.utils import threads


def test_auto_threads_leaves_the_busy_cores_alone():
    assert threads.auto_threads(2, busy=0.0, cores=2) == 2
    assert threads.auto_threads(2, busy=0.4, cores=2) == 2
    assert threads.auto_threads(2, busy=1.0, cores=2) == 1
    assert threads.auto_threads(8, busy=5.0, cores=4) == 1  # never below one
    assert threads.auto_threads(2, busy=0.0, cores=16) == 2  # never above torch's default


def test_busy_cores_sees_a_competing_process():
    before = threads.busy_cores(0.2)
    assert before is not None and 0.0 <= before <= (threads.os.cpu_count() or 1) + 1e-6
    loop = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(0.3)
        during = threads.busy_cores(0.3)
    finally:
        loop.kill()
        loop.wait()
    assert during is not None and during >= 0.8  # the busy loop holds one core


def test_cli_respects_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda window_s=0.1: 64.0)
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        cli._busy_machine_threads()
        assert torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        cli._busy_machine_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
