"""kill -9 at every point of a checkpoint write, and at random points of real training runs.

``test_kill_at_every_step_of_a_checkpoint_write`` forks a child that writes a checkpoint and
SIGKILLs itself before the n-th file-system operation (or halfway through writing a tensor
file), for every n until the write completes; after each kill the folder must still hold a
valid checkpoint, equal bit for bit to the old or the new one. The kill-9 torture of whole
training runs is ``tests/train/torture.py``: a short version runs here, the long one is
``slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

import nestlearn.train.checkpoint as ck
from nestlearn.train.checkpoint import list_checkpoints, load_latest, recover, save_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), value), "b": torch.arange(8.0) + value}


def _write(ckpt_dir: Path, step: int, value: float) -> Path:
    return save_checkpoint(
        ckpt_dir,
        step,
        _state(value),
        {"state": {0: {"m": torch.full((3,), value)}}, "param_groups": [{"lr": 0.1}]},
        {"tokens_seen": step},
        {"torch_cpu": torch.get_rng_state()},
        keep_last=1,
        config={"train": {"steps": 10}, "value": value},
    )


def _die_at(n: int, torn: bool) -> None:
    """In the child: SIGKILL before the n-th file operation (``torn``: halfway through it)."""
    count = [0]

    def wrap(fn, writes_file: bool = False):
        def inner(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                if torn and writes_file:
                    fn(*args, **kwargs)
                    path = Path(args[1] if fn is real_save else args[0])
                    with open(path, "r+b") as f:
                        f.truncate(path.stat().st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return inner

    real_save = ck.save_file
    ck.save_file = wrap(real_save, writes_file=True)
    ck.os.replace = wrap(os.replace)
    ck.shutil.rmtree = wrap(shutil.rmtree)
    ck._fsync_file = wrap(ck._fsync_file)
    ck._fsync_dir = wrap(ck._fsync_dir)
    Path.write_text = wrap(Path.write_text, writes_file=True)
    Path.mkdir = wrap(Path.mkdir)


def _run_child(ckpt_dir: Path, step: int, value: float, n: int, torn: bool) -> bool:
    """Write checkpoint ``step`` in a forked child killed at operation ``n``; True if it died."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            _die_at(n, torn)
            _write(ckpt_dir, step, value)
        except BaseException:  # noqa: BLE001 - report through the exit code only
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child's write failed without being killed"
    return False


@pytest.mark.parametrize("same_step", [False, True], ids=["new-step", "same-step"])
@pytest.mark.parametrize("torn", [False, True], ids=["clean-kill", "torn-file"])
def test_kill_at_every_step_of_a_checkpoint_write(tmp_path, same_step, torn):
    new_step = 4 if same_step else 6
    kills = 0
    for n in range(1, 200):
        ckpt_dir = tmp_path / f"k{n}"
        _write(ckpt_dir, 4, 1.0)  # the old checkpoint (keep_last=1: the only one)
        died = _run_child(ckpt_dir, new_step, 2.0, n, torn)
        recover(ckpt_dir)
        leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".")]
        assert not leftovers, (n, leftovers)
        got = load_latest(ckpt_dir)
        assert got is not None, f"kill at operation {n}: no checkpoint left"
        value = float(got.model["b"][0])
        assert value in (1.0, 2.0), n
        assert torch.equal(got.model["w"], _state(value)["w"])
        assert got.step == (4 if value == 1.0 else new_step) and got.config["value"] == value
        assert list_checkpoints(ckpt_dir)[-1] == got.path  # the newest folder is a good one
        shutil.rmtree(ckpt_dir)
        if not died:
            assert value == 2.0
            break
        kills += 1
    assert kills >= 8  # every file operation of the write was a kill point


def test_short_kill9_torture(tmp_path):
    """Four kill -9s (two during checkpoint writes) of a real training run, then its resume
    must match an uninterrupted run bit for bit: metrics (each step once) and final weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.train.torture import torture

    report = torture(tmp_path, kills=4, steps=14, seed=1)
    assert report["kills"] == 4 and report["kills_during_write"] >= 1
    assert report["corrupt_accepted"] == 0
    assert report["lost_runs"] == 0
    assert report["resume_mismatches"] == 0, report["mismatch_detail"]


@pytest.mark.slow
def test_kill9_torture_25_kills(tmp_path):
    from tests.train.torture import torture

    report = torture(tmp_path, kills=25, steps=60, seed=7)
    assert report["kills"] == 25 and report["kills_during_write"] >= 8
    assert report["corrupt_accepted"] == report["lost_runs"] == report["resume_mismatches"] == 0
