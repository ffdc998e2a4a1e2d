"""Every bad input of issue 20, table-driven (``tests/cli/bad_inputs.py``): the exit code, a
message naming the problem, no traceback, and nothing overwritten."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nestlearn.cli import main  # noqa: E402
from tests.cli.bad_inputs import CASES, enospc, make_env, snapshot  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case, env, capsys, monkeypatch):
    if "transformers" in case.needs:
        pytest.importorskip("transformers")
    ctx: dict = {}
    if case.real == "ro":
        if IS_ROOT:
            pytest.skip("root writes into read-only folders; measured with a read-only mount")
        target = env.fresh("ro")
        target.mkdir()
        target.chmod(0o555)
        ctx["target"] = target
    argv = case.make(env, ctx)
    if case.simulate:
        enospc(monkeypatch, case.simulate)
    before = snapshot(ctx.get("protect", []))
    capsys.readouterr()
    code = main(argv)  # an exception escaping here is the traceback a user would see
    out, err = capsys.readouterr()
    assert code == case.code, (code, err[-2000:], out[-500:])
    assert case.needle in (err if case.code else out + err), err[-2000:]
    assert "Traceback" not in err
    assert snapshot(ctx.get("protect", [])) == before, "a refused command changed files"
    if "after" in ctx:
        assert ctx["after"]() == ""
