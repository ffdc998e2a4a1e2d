"""The reproduction report knows the issue-18 baselines: their paper rows (Tables 1, 2 and 4) sit
beside our rows, and RWKV-7 / Comba count among the linear RNNs of the Titans claim."""

from __future__ import annotations

from nestlearn.studies import report_md as R
from nestlearn.studies.compare import available_models


def test_new_families_map_to_their_paper_rows() -> None:
    assert R.paper_name("rwkv7-tiny") == "RWKV-7" and R.paper_name("comba-tiny") == "Comba"
    assert R.paper_name("memora-tiny") == "Miras (Memora)" and R.paper_name("dla-tiny") == "DLA"
    for name in ("RWKV-7", "Comba", "Miras (Memora)", "DLA"):
        assert len(R.PAPER_TABLE2_760M[name]) == len(R.TABLE2_COLS)
    assert R.PAPER_TABLE2_760M["Miras (Memora)"][0] == 22.28  # second only to Hope (Table 2)
    zs = {"runs": [{"model": "memora-tiny", "row": {c: 1.0 for c in R.TABLE2_COLS}}]}
    table = R.zeroshot_table(zs)
    assert (
        "| memora-tiny (ours, 1 seed) |" in table
        and "| Miras (Memora) (paper, 760M/30B) |" in table
    )


def test_niah_and_mad_tables_show_the_new_paper_rows() -> None:
    niah = [{"model": "rwkv7-tiny", "task": "s_niah_1", "length": 1024, "score": 0.5}]
    assert "100/100/99.6" in R.niah_table(niah)
    recall = [{"model": "comba-tiny", "task": "in_context_recall", "seed": 0, "accuracy": 0.5}]
    t = R.task_table(recall, "task", R.MAD_COLUMNS, "accuracy", R.PAPER_TABLE4, "paper")
    assert "| comba-tiny (ours) | 50.0 |" in t and "| Comba (paper) | 100 |" in t


def test_the_default_lineup_includes_the_new_families() -> None:
    """``compare`` and ``reproduce`` (suites with ``models=None``) train every ``-tiny`` preset."""
    fams = available_models()
    for f in ("moneta", "yaad", "memora", "dla", "rwkv7", "comba"):
        assert f"{f}-tiny" in fams or f in fams
    assert "nested" not in fams and "nested-demo" not in fams
    assert {"rwkv7", "comba"} <= set(R.LINEAR_RNNS)
