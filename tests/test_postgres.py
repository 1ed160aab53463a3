"""The PostgreSQL store against a real server that these tests start and stop themselves.

A server that cannot start fails every test here with the reason (never a skip). Runners are
real `transferlab run` processes on the baseline CNN at 16 px and synthetic data. Tests
parametrized over both backends check that SQLite and PostgreSQL behave alike.
"""
from __future__ import annotations

import re
import shutil
import signal
import time

import pytest
import torch

from pg_server import PgServer, PgServerError, free_port
from test_reliability import grid, main_in, popen, quick_config, run_cli
from transferlab import cli
from transferlab.errors import ClaimLost
from transferlab.store import COLUMNS, Store


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PgServer().start()
    except PgServerError as e:
        pytest.fail(f"cannot start the test PostgreSQL server: {e}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path):
    """A fresh store location of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows(where: str, sql: str, *params) -> list[tuple]:
    st = Store(where, create=False)
    try:
        return [tuple(dict(r).values()) for r in st._x(sql, params).fetchall()]
    finally:
        st.close()


def by_name(where: str) -> dict:
    st = Store(where, create=False)
    try:
        return {r["name"]: dict(r) for r in st._x("SELECT * FROM experiments").fetchall()}
    finally:
        st.close()


def stale(st: Store, exp_id: str) -> None:
    """Age the claim's heartbeat beyond any lease, as if its runner's machine had gone away."""
    st._x("UPDATE experiments SET heartbeat=? WHERE id=?", (time.time() - 1e6, exp_id))


# ------------------------------------------------------------------ the store API on both backends

def test_postgres_and_sqlite_stores_keep_the_same_records(tmp_path, pg_url):
    got = {}
    for kind, where in (("sqlite", str(tmp_path / "s.db")), ("postgres", pg_url)):
        st = Store(where)
        st.register("e1", "one", {"model": "baseline", "resolution": 16, "regime": "scratch"})
        token = st.claim("e1", "hostA:1:aa")
        assert token and st.get("e1")["token"] == token and st.get("e1")["attempts"] == 1
        st.set_details("e1", {"k": [1, 2]})
        st.add_epoch("e1", {"epoch": 1, "train_loss": 1 / 3, "val_acc": 0.1 + 0.2, "img_per_s": 7.5})
        st.add_epoch("e1", {"epoch": 1, "train_loss": 2 / 3, "img_per_s": 7.5})  # replaces
        st.finish("e1", {"test_acc": 2 / 7, "val_acc": 1 / 9, "per_class": [0.5, 0.25],
                         "confusion": [[1, 0], [0, 1]], "classes": ["a", "b"], "extra": {"x": 1}},
                  {"torch": "2"})
        st.save_study("s", "cfg.toml", {"epochs": 1}, [("one", "e1")], [])
        e = st.get("e1")
        assert (e["status"], e["owner"], e["token"]) == ("done", None, None)
        got[kind] = (st.epochs("e1"), st.result("e1"), st.environment("e1"),
                     {k: v for k, v in st.study().items() if k != "updated"}, st.throughputs(),
                     st.integrity())
        st.close()
    assert got["sqlite"] == got["postgres"]  # doubles stay doubles: bit-identical numbers
    assert got["postgres"][0][0]["train_loss"] == 2 / 3


def test_a_fenced_out_runners_writes_are_refused_postgres_and_sqlite(where):
    a, b = Store(where), Store(where)
    a.register("e", "exp", {})
    assert a.claim("e", "elsewhere:11:aa")  # another host: only the lease keeps the claim
    a.add_epoch("e", {"epoch": 1, "train_loss": 1.0})
    assert b.claim("e", "here:22:bb") is None  # held, heartbeat fresh
    stale(b, "e")
    assert b.claim("e", "here:22:bb")  # taken over
    attempts = b.get("e")["attempts"]
    writes = [lambda: a.add_epoch("e", {"epoch": 2, "train_loss": 9.0}),
              lambda: a.set_details("e", {"from": "a"}),
              lambda: a.clear_epochs("e"),
              lambda: a.set_status("e", "failed", "a thinks it failed"),
              lambda: a.finish("e", {"test_acc": 0.99}, {}),
              lambda: a.heartbeat("e", "elsewhere:11:aa")]
    for write in writes:  # each one, also after the first refusal
        with pytest.raises(ClaimLost, match="taken over"):
            write()
    e = b.get("e")
    assert (e["status"], e["owner"], e["attempts"], e["details"]) == \
        ("running", "here:22:bb", attempts, None)
    assert [r["epoch"] for r in b.epochs("e")] == [1] and b.result("e") is None
    b.add_epoch("e", {"epoch": 2, "train_loss": 0.5})  # the new owner writes freely
    b.finish("e", {"test_acc": 0.5}, {})
    assert b.get("e")["status"] == "done" and b.result("e")["test_acc"] == 0.5
    a.close()
    b.close()


def test_a_runner_whose_claim_is_taken_over_stops_and_says_why_postgres_and_sqlite(
        where, tmp_path, monkeypatch, capsys):
    quick_config(tmp_path / "t.toml", name="steal", epochs=3)
    real_add = Store.add_epoch

    def steal_after_first_epoch(self, exp_id, row):
        real_add(self, exp_id, row)
        if row["epoch"] == 1:
            thief = Store(where)
            stale(thief, exp_id)
            assert thief.claim(exp_id, "thief:1:ff")
            thief.close()

    monkeypatch.setattr(Store, "add_epoch", steal_after_first_epoch)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "t.toml", "--store", where)
    assert rc == 0, out + err
    assert "STOPPED" in out and "taken over" in out and "not marked failed" in out
    assert "1 held by other runners, 0 failed" in out
    e = by_name(where)["main"]
    assert (e["status"], e["owner"], e["attempts"]) == ("running", "thief:1:ff", 2)
    assert [r[0] for r in rows(where, "SELECT epoch FROM epochs")] == [1]  # nothing after the theft


# ------------------------------------------------------------------ runner processes on one server

def test_three_runner_processes_share_a_postgres_store(tmp_path, pg_url):
    cfg = quick_config(tmp_path / "g.toml", name="grid12", data="synthetic:8", epochs=1,
                       body=grid("g", range(12)))
    t0 = time.time()
    procs = [popen(tmp_path, "run", cfg, "--store", pg_url, "--runs-dir", tmp_path / "shared",
                   out=tmp_path / f"r{i}.log") for i in range(3)]
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"r{i}.log").read_text() for i in range(3)]
    assert codes == [0, 0, 0], "\n".join(logs)
    exps = by_name(pg_url)
    assert sorted(exps) == sorted(f"g-{s}" for s in range(12))
    for name, e in exps.items():
        assert (e["status"], e["attempts"], e["owner"], e["token"]) == ("done", 1, None, None), e
        starts = sum(len(re.findall(rf"^\[\d+/12\] {name}  \(id", log, re.M)) for log in logs)
        assert starts == 1, f"{name} started {starts} times"
    assert sum(bool(re.search(r"\(id ", log)) for log in logs) >= 2, "one runner did everything"
    assert rows(pg_url, "SELECT count(*) FROM epochs")[0][0] == 12
    assert rows(pg_url, "SELECT count(*) FROM results")[0][0] == 12
    assert len(list((tmp_path / "shared" / "grid12").glob("*/model.pt"))) == 12
    assert not (tmp_path / "runs").exists()  # runs_dir came from --runs-dir, not the store
    print(f"3 runners, 12 experiments: {time.time() - t0:.1f}s")


def _max_epoch(url: str, name: str) -> int:
    try:
        r = rows(url, "SELECT max(e.epoch) FROM epochs e JOIN experiments x ON e.exp_id = x.id "
                      "WHERE x.name = ?", name)
    except Exception:  # not created yet
        return 0
    return r[0][0] or 0


def _status(url: str, name: str) -> str | None:
    try:
        return by_name(url).get(name, {}).get("status")
    except Exception:
        return None


KILL = """
[[experiment]]
name = "long"
epochs = 6

[[experiment]]
name = "short"
"""


def test_postgres_kill9_survivor_takes_over_after_the_lease_bit_identical(tmp_path, pg_url,
                                                                           monkeypatch):
    """The victim holds `long`; the survivor runs `short`, then waits. kill -9 of the victim
    mid-epoch: the survivor takes `long` over once the victim's heartbeat is older than the
    lease (not before), resumes from the shared checkpoint, and ends bit-identical."""
    lease = 4.0
    monkeypatch.setenv("TRANSFERLAB_LEASE_SECONDS", str(lease))
    cfg = quick_config(tmp_path / "k.toml", name="kill", data="synthetic:96", epochs=1, body=KILL)
    shared = tmp_path / "shared"
    args = ("run", cfg, "--store", pg_url, "--runs-dir", shared)
    victim = popen(tmp_path, *args, out=tmp_path / "victim.log")
    logs = lambda: (tmp_path / "victim.log").read_text() + "\n---\n" + (  # noqa: E731
        (tmp_path / "survivor.log").read_text() if (tmp_path / "survivor.log").exists() else "")
    deadline = time.time() + 150
    while _status(pg_url, "long") != "running":
        assert victim.poll() is None and time.time() < deadline, logs()
        time.sleep(0.05)
    survivor = popen(tmp_path, *args, "--wait", out=tmp_path / "survivor.log")
    while "waiting for 1 experiment" not in (tmp_path / "survivor.log").read_text() \
            or _max_epoch(pg_url, "long") < 1:
        assert victim.poll() is None and survivor.poll() is None, logs()
        assert time.time() < deadline, "the survivor never got to wait for `long`\n" + logs()
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    assert victim.wait() == -signal.SIGKILL
    assert _status(pg_url, "long") == "running", "`long` finished before the kill: make it longer"
    while by_name(pg_url)["long"]["attempts"] < 2:  # the survivor takes it over...
        assert survivor.poll() is None, logs()
        assert time.time() < killed_at + 120, "the survivor never took `long` over\n" + logs()
        time.sleep(0.05)
    # ...only once the dead runner's heartbeat (refreshed every lease/6) is older than the lease
    assert time.time() - killed_at >= lease - lease / 6 - 0.1
    assert survivor.wait(timeout=240) == 0, logs()
    log = (tmp_path / "survivor.log").read_text()
    assert "resuming from checkpoint after epoch" in log, log
    exps = by_name(pg_url)
    assert exps["long"]["status"] == "done" and exps["long"]["attempts"] == 2
    assert exps["short"]["status"] == "done" and exps["short"]["attempts"] == 1

    ref = tmp_path / "ref"
    (ref / "data").mkdir(parents=True)
    shutil.copy(cfg, ref / "k.toml")
    # the same machine: the same measured numerics (precision "auto" is timed once per machine)
    shutil.copy(tmp_path / "data" / "numerics.json", ref / "data" / "numerics.json")
    plain = run_cli(ref, "run", "k.toml", "--only", "long")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    ref_db = str(ref / "runs" / "transferlab.db")
    kid = exps["long"]["id"]
    cols = "val_acc, test_acc, test_acc_no_tta, confusion, best_epoch"
    got = rows(pg_url, f"SELECT {cols} FROM results WHERE exp_id = ?", kid)
    assert got and got == rows(ref_db, f"SELECT {cols} FROM results WHERE exp_id = ?", kid)
    ep = "SELECT epoch, train_loss, train_acc, val_acc, val_loss, lr FROM epochs WHERE exp_id = ? " \
         "ORDER BY epoch"
    assert rows(pg_url, ep, kid) == rows(ref_db, ep, kid) and len(rows(pg_url, ep, kid)) == 6
    load = lambda d: torch.load(d / "kill" / kid / "model.pt",  # noqa: E731
                                map_location="cpu", weights_only=True)
    a, b = load(shared), load(ref / "runs")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ store copy

def _dump(where: str) -> dict:
    st = Store(where, create=False)
    try:
        cols = {t: [c for c in COLUMNS[t] if (t, c) != ("studies", "updated")] for t in COLUMNS}
        return {t: sorted(tuple(dict(r)[c] for c in cols[t]) for r in
                          st._x(f"SELECT * FROM {t}").fetchall()) for t in COLUMNS}
    finally:
        st.close()


def test_store_copy_sqlite_to_postgres_and_back(tmp_path, pg_url, monkeypatch, capsys):
    quick_config(tmp_path / "c.toml", name="laptop", epochs=2, body=grid("c", [0, 1]))
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "c.toml")
    assert rc == 0, out + err
    db = str(tmp_path / "runs" / "transferlab.db")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "store", "copy", db, pg_url)
    assert rc == 0, out + err
    assert "copied 2 experiments and 1 studies" in out
    assert _dump(pg_url) == _dump(db)
    # the study continues on the server: nothing to redo, status and report read it
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "c.toml", "--store", pg_url)
    assert rc == 0 and out.count("done, skipped") == 2, out + err
    monkeypatch.setenv("TRANSFERLAB_STORE", pg_url)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "status")
    assert rc == 0 and "laptop" in out and out.count(" done ") == 2, out + err
    assert "postgresql://" in out
    monkeypatch.delenv("TRANSFERLAB_STORE")

    back = str(tmp_path / "back.db")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "store", "copy", pg_url, back)
    assert rc == 0, out + err
    assert _dump(back) == _dump(db)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "store", "copy", db, pg_url)
    assert rc == 0 and "2 already there" in out

    # the source changes (c-1 forgotten): its records now conflict with the server's
    st = Store(db)
    st.reset(by_name(db)["c-1"]["id"])
    st.close()
    before = _dump(pg_url)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "store", "copy", db, pg_url)
    assert rc == 2 and "c-1" in err and "--overwrite" in err and "Nothing was copied" in err
    assert _dump(pg_url) == before
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "store", "copy", db, pg_url,
                           "--overwrite")
    assert rc == 0 and "1 replaced" in out, out + err
    assert _dump(pg_url) == _dump(db)


def test_store_copy_postgres_running_claim_travels_as_pending(tmp_path, pg_url):
    st = Store(pg_url)
    st.register("e", "exp", {"a": 1})
    st.claim("e", "h:1:aa")
    st.add_epoch("e", {"epoch": 1, "train_loss": 0.25})
    st.save_study("s", "", {}, [("exp", "e")], [])
    st.close()
    assert cli.main(["store", "copy", pg_url, str(tmp_path / "x.db"), "--study", "s"]) == 0
    e = by_name(str(tmp_path / "x.db"))["exp"]
    assert (e["status"], e["owner"], e["token"]) == ("pending", None, None)
    assert rows(str(tmp_path / "x.db"), "SELECT epoch, train_loss FROM epochs") == [(1, 0.25)]
    assert cli.main(["store", "copy", pg_url, str(tmp_path / "y.db"), "--study", "nope"]) == 2


def test_postgres_store_unreachable_or_foreign_is_a_clear_error(tmp_path, pg_url, pg_server,
                                                                monkeypatch, capsys):
    quick_config(tmp_path / "s.toml")
    dead = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x"  # nobody listens there
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "status", "--store", dead)
    assert rc == 2 and "cannot connect to the PostgreSQL store" in err and "secret" not in err
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "status", "--store", pg_url)
    assert rc == 2 and "no transferlab store" in err
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("CREATE TABLE customers (id INTEGER)")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", "--store", pg_url)
    assert rc == 2 and "is not a transferlab store" in err


def test_the_budget_ledger_adds_up_postgres_and_sqlite(where):
    """Several runners charge one study's grid time: each charge adds, none overwrites."""
    a, b = Store(where), Store(where)
    try:
        assert a.ledger("s|x") is None
        a.charge("s|x", 12.5)
        b.charge("s|x", 7.5)
        a.charge("s|y", 1.0)
        assert a.ledger("s|x") == pytest.approx(20.0) and b.ledger("s|y") == pytest.approx(1.0)
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ secrets stay secret

PASSWORD = "Pw-9f3kq71"  # the test server trusts every login: what matters is where it shows


def _secret_urls(pg_url: str) -> tuple[str, str]:
    """The same store with its password in the user:password form and in the query form."""
    with_user = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    return with_user, f"{pg_url}?password={PASSWORD}"


def test_status_and_report_never_show_a_store_password(tmp_path, pg_url, monkeypatch, capsys):
    user_form, query_form = _secret_urls(pg_url)
    quick_config(tmp_path / "s.toml")
    shown = []
    for extra in ((), ("--epochs", "2")):  # two override sets: status hints at the other one
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml", *extra,
                               "--store", user_form)
        assert rc == 0, out + err
        shown.append(out + err)
    commands = (("status", "s.toml"), ("status",), ("report", "s.toml"),
                ("report", "s.toml", "--json"), ("show", "main", "s.toml"))
    for url in (user_form, query_form):
        for cmd in commands:
            rc, out, err = main_in(tmp_path, monkeypatch, capsys, *cmd, "--store", url)
            assert rc == 0, out + err
            shown.append(out + err)
        monkeypatch.setenv("TRANSFERLAB_STORE", url)
        for cmd in commands:
            rc, out, err = main_in(tmp_path, monkeypatch, capsys, *cmd)
            assert rc == 0, out + err
            shown.append(out + err)
        monkeypatch.delenv("TRANSFERLAB_STORE")
    assert not [s for s in shown if PASSWORD in s]
    text = "\n".join(shown)
    assert "postgres:***@127.0.0.1" in text and "?password=***" in text
    assert "the store also holds study rel run with" in text and "--store 'postgresql://postgres:***@" in text


def test_the_notebook_never_holds_a_store_password(tmp_path, pg_url, monkeypatch, capsys):
    """The executed .ipynb and .html are what users commit and hand in: the kernel gets a
    server URL from the environment, and the report names it masked."""
    user_form, query_form = _secret_urls(pg_url)
    quick_config(tmp_path / "s.toml", name="nbsecret")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "notebook", "s.toml", "--store",
                           user_form, "--out", "a")
    assert rc == 0, out + err
    monkeypatch.setenv("TRANSFERLAB_STORE", query_form)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "notebook", "s.toml", "--out", "b")
    assert rc == 0, out + err
    for folder, masked in (("a", "postgres:***@127.0.0.1"), ("b", "?password=***")):
        for name in ("nbsecret.ipynb", "nbsecret.html"):
            text = (tmp_path / folder / name).read_text(encoding="utf-8")
            assert PASSWORD not in text, f"{folder}/{name}"
            assert masked in text, f"{folder}/{name}"
    assert rows(pg_url, "SELECT status FROM experiments") == [("done",)]  # it used that store
