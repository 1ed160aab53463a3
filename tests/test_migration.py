"""A store written by an older transferlab opens, is upgraded in place, and keeps everything.

tests/data/store-main-40e65b1.db was written by main at commit 40e65b1 (store schema 3), by
`transferlab run tests/data/configs-main-40e65b1/tiny-regimes.toml --data synthetic` (every
regime, 3 epochs, CPU). The numbers below were read from that file with sqlite3 when it was
made (Python's repr); this code must read the same through its typed records and queries.
"""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from transferlab import record, store as store_mod
from transferlab.report.tables import format_details, study_rows
from transferlab.store import Store

OLD = Path(__file__).resolve().parent / "data" / "store-main-40e65b1.db"

# name: (id, val_acc, test_acc, best_epoch, epoch rows), as main wrote them
MAIN_ROWS = {
    'base': ('e6ab9f909e41b226', 1.0, 1.0, 1, 3),
    'lite0-full': ('9379744384954a29', 0.5, 0.5, 1, 3),
    'lite0-gradual': ('22689f9237e826f8', 0.4166666567325592, 0.2874999940395355, 3, 3),
    'lite0-last1': ('ba546aea57ddd2ef', 0.875, 0.8999999761581421, 3, 3),
    'lite0-linear': ('efdc2e9ffcf297ad', 0.75, 0.7250000238418579, 3, 3),
    'lite0-linear-bp': ('46f3ab8e0c0ea4a1', 0.375, 0.25, 1, 3),
    'lite0-linear-mlp': ('751c2a94482c6e9c', 0.75, 0.75, 3, 3),
    'lite0-scratch': ('e8f86f84ce0a27fe', 0.4166666567325592, 0.48750001192092896, 3, 3),
}


def _dump(path: Path) -> dict:
    """Every row of every table the old file holds (raw, as sqlite3 sees it)."""
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: sorted(map(tuple, db.execute(f"SELECT * FROM {t}"))) for t in tables if t != "meta"}
    db.close()
    return out


@pytest.fixture
def old_store(tmp_path) -> Path:
    path = tmp_path / "transferlab.db"
    shutil.copy(OLD, path)
    return path


def test_old_store_opens_upgraded_with_nothing_lost(old_store):
    before = _dump(old_store)
    st = Store(old_store, create=False)
    assert st._version() == store_mod.SCHEMA_VERSION
    after = _dump(old_store)
    for table, rows in before.items():  # every old row is still there, column for column
        width = len(rows[0]) if rows else 0
        assert sorted(r[:width] for r in after[table]) == rows, table
    names = {r["name"]: r["id"] for r in st._x("SELECT id, name FROM experiments")}
    assert names == {n: v[0] for n, v in MAIN_ROWS.items()}
    for name, (exp_id, val, test, best, n_epochs) in MAIN_ROWS.items():
        res = st.result_record(exp_id)
        assert (res.val_acc, res.test_acc, res.best_epoch) == (val, test, best), name
        assert len(res.per_class) == 4 and len(res.confusion) == 4
        rows = [record.EpochRow.from_dict(r) for r in st.epochs(exp_id)]
        assert [r.epoch for r in rows] == list(range(1, n_epochs + 1))
        assert all(record.format_epoch(r.as_dict(), n_epochs) for r in rows)
    assert st.ledger("main|x") is None  # the budget's ledger arrived empty, and takes charges
    st.charge("main|x", 3.0)
    assert st.ledger("main|x") == 3.0
    st.close()


def test_old_descriptions_and_tables_read_as_before(old_store):
    st = Store(old_store, create=False)
    study = st.study("tiny")
    rows = {r.name: r for r in study_rows(st, study["members"], study["externals"])}
    assert {n: (r.val_acc, r.test_acc) for n, r in rows.items()} == \
        {n: (v[1], v[2]) for n, v in MAIN_ROWS.items()}
    for name, (exp_id, *_) in MAIN_ROWS.items():
        details = json.loads(st.get(exp_id)["details"])
        lines = format_details(details)  # main's dict, read through the typed Description
        assert any(line.startswith("  regime         : ") for line in lines)
        if name == "lite0-gradual":  # main's own key for gradual's settings still shows
            assert any("head only for 1 epoch(s)" in line for line in lines)
    st.close()


def test_upgraded_store_takes_new_work(old_store):
    st = Store(old_store, create=False)
    st.register("new0000000000000", "new", {"model": "baseline"})
    st.finish("new0000000000000", record.Result(test_acc=0.5, val_acc=0.5, fit=record.BACKPROP,
                                                 val_predictions=[1, 0], val_labels=[1, 1]), {})
    new = st.result_record("new0000000000000")
    assert (new.fit, new.val_predictions, new.val_labels) == ("backprop", [1, 0], [1, 1])
    st.register("new0000000000001", "newer", {"model": "baseline"})
    st.finish("new0000000000001", {"test_acc": 0.5, "extra": {"k": 1}}, {})  # another version's
    assert st.result_record("new0000000000001").unknown == {"k": 1}  # key, kept as it was
    assert st.result_record(MAIN_ROWS["base"][0]).test_acc == 1.0
    st.close()


def test_old_results_without_predictions_state_intervals_not_a_paired_test(old_store):
    """Results written before validation predictions were kept: the conclusions compare them
    by their Wilson intervals and say why no paired test was made."""
    from transferlab.report.conclusions import comparison
    st = Store(old_store, create=False)
    study = st.study("tiny")
    rows = [r for r in study_rows(st, study["members"], study["externals"]) if r.val_acc is not None]
    assert all(r.result is not None and r.result.val_predictions is None for r in rows)
    text, _ = comparison(rows[0], rows[1], "val", 10, 10)
    assert "парный тест невозможен" in text and "95 % ДИ" in text
    st.close()
