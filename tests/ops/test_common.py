"""``nestlearn.ops.common``: the helpers every op family shares."""

from __future__ import annotations

import pytest
import torch

from nestlearn.ops.common import (
    check_chunk_size,
    check_matrix_state,
    check_per_token,
    check_values,
    compute_dtype,
    heads_first,
    pad_axis,
    shift_right,
)


@pytest.mark.parametrize(
    ("dtype", "want"),
    [(torch.float64, torch.float64), (torch.float32, torch.float32),
     (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
)  # fmt: skip
def test_compute_dtype(dtype, want):
    assert compute_dtype(torch.zeros(1, dtype=dtype)) == want
    assert compute_dtype(dtype) == want


def test_pad_axis_pads_the_end_of_one_axis_only():
    x = torch.arange(6.0).view(1, 3, 2)
    y = pad_axis(x, 5, dim=1, value=-1.0)
    assert y.shape == (1, 5, 2) and torch.equal(y[:, :3], x) and (y[:, 3:] == -1).all()
    assert pad_axis(x, 3) is x  # already long enough: no copy
    assert pad_axis(x, 4, dim=-1).shape == (1, 3, 4)


def test_heads_first_transposes_casts_and_pads():
    x = torch.randn(2, 5, 3, 4)
    y = heads_first(x, 8, torch.float64)
    assert y.shape == (2, 3, 8, 4) and y.dtype == torch.float64 and y.is_contiguous()
    assert torch.equal(y[:, :, :5], x.double().transpose(1, 2)) and (y[:, :, 5:] == 0).all()


def test_shift_right():
    x = torch.arange(6.0).view(2, 3)
    assert torch.equal(shift_right(x, -1, 9.0), torch.tensor([[9.0, 0, 1], [9.0, 3, 4]]))
    assert torch.equal(shift_right(x, 0, 0.0), torch.tensor([[0.0, 0, 0], [0.0, 1, 2]]))


def test_checks_name_the_bad_value():
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, Dv\] = \[2, 5, 3, Dv\]"):
        check_values(torch.zeros(2, 4, 3, 8), 2, 5, 3, "Dv")
    with pytest.raises(ValueError, match=r"eta must be \[B, T, H\] = \(2, 5, 3\)"):
        check_per_token((2, 5, 3), beta=None, eta=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="initial_state must be"):
        check_matrix_state(torch.zeros(2, 3, 4, 4), 2, 3, 4, 5)
    with pytest.raises(ValueError, match="try 16"):
        check_chunk_size(0, hint=16)
    check_chunk_size(None, hint=16)


def test_the_dtype_rule_is_written_once_in_ops_and_optim():
    """Every op family and optimizer takes the compute dtype from ``utils.dtypes`` (through
    ``ops.common`` for the ops): STYLE's "written once"."""
    import re
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[2] / "src" / "nestlearn"
    rule = re.compile(r"float64 if .*float64 else torch\.float32|def compute_dtype\(")
    copies = [
        str(p.relative_to(pkg))
        for sub in ("ops", "optim")
        for p in sorted((pkg / sub).rglob("*.py"))
        if rule.search(p.read_text(encoding="utf-8"))
    ]
    assert not copies, (
        f"import compute_dtype from nestlearn.ops.common (ops) or nestlearn.utils.dtypes: {copies}"
    )


def test_check_keys_names_every_tensor():
    from nestlearn.ops.common import check_keys

    q = torch.zeros(2, 5, 3, 4)
    assert check_keys(q=q, k=q) == (2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"q and k must both be .* got \(2, 5, 3, 4\) and \(2, 5"):
        check_keys(q=q, k=torch.zeros(2, 5, 3, 2))
    with pytest.raises(ValueError, match=r"q, k and p must all be"):
        check_keys(q=q, k=q, p=torch.zeros(1))
