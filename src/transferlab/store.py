"""The study store: one SQLite file (WAL) with experiments, per-epoch metrics and results.

Experiments are keyed by the hash of their resolved config. Several runner processes can
share one store: an experiment is claimed in an IMMEDIATE transaction, a running claim keeps
a heartbeat, and a claim whose process died (same host: pid gone; elsewhere: heartbeat older
than the lease) can be taken over.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

SCHEMA_VERSION = 1
LEASE_SECONDS = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT, config TEXT NOT NULL, details TEXT, owner TEXT, heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    exp_id TEXT NOT NULL, epoch INTEGER NOT NULL, phase TEXT, train_loss REAL, train_acc REAL,
    val_acc REAL, val_loss REAL, lr REAL, seconds REAL, img_per_s REAL,
    PRIMARY KEY (exp_id, epoch));
CREATE TABLE IF NOT EXISTS results (
    exp_id TEXT PRIMARY KEY, val_acc REAL, test_acc REAL, test_acc_no_tta REAL,
    per_class TEXT, confusion TEXT, classes TEXT, best_epoch INTEGER, train_seconds REAL,
    total_seconds REAL, peak_mem_mb REAL, extra TEXT);
CREATE TABLE IF NOT EXISTS environment (exp_id TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY, config_path TEXT, overrides TEXT, members TEXT NOT NULL,
    externals TEXT NOT NULL, updated REAL NOT NULL);
"""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None, heartbeat: float | None, lease: float) -> bool:
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            pass
        if _is_zombie(pid):  # killed but not yet reaped by its parent: it holds nothing
            return False
        return heartbeat is not None and time.time() - heartbeat < lease * 5
    return heartbeat is not None and time.time() - heartbeat < lease


def _is_zombie(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class Store:
    def __init__(self, path: Path | str, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise UserError(f"no store at {self.path}; run a study first (transferlab run CONFIG)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=60000")
        try:
            self._check_schema()  # before WAL: a file that is not ours must stay untouched
        except sqlite3.OperationalError:
            self.db.close()
            raise
        except sqlite3.DatabaseError as e:  # "file is not a database"
            self.db.close()
            raise UserError(f"{self.path} is not a transferlab store ({e}); use another --store "
                            "path or move that file away") from None
        except BaseException:
            self.db.close()
            raise
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")

    # -------------------------------------------------------------- schema

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise UserError(f"{self.path} is not a transferlab store (no meta table); use another "
                            "--store path or move that file away")
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer transferlab (schema "
                                f"{version}, this one reads {SCHEMA_VERSION}); upgrade transferlab")
            if version < SCHEMA_VERSION:
                self._migrate(version)
            return
        self.db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR REPLACE INTO meta VALUES "
                              f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;")

    def _migrate(self, version: int) -> None:
        raise UserError(f"{self.path} has store schema {version}, which this transferlab cannot "
                        f"migrate to {SCHEMA_VERSION}; start a new store (--store PATH)")

    @contextmanager
    def tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # -------------------------------------------------------------- experiments

    def register(self, exp_id: str, name: str, config: dict) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO experiments (id, name, config, created, updated) "
                       "VALUES (?, ?, ?, ?, ?)", (exp_id, name, json.dumps(config), now, now))
            db.execute("UPDATE experiments SET name=? WHERE id=?", (name, exp_id))

    def adopt(self, old_id: str, new_id: str) -> bool:
        """Move an experiment's rows from an id an older transferlab computed to its current
        one; False when there is nothing to move or the new id exists already."""
        with self.tx() as db:
            if db.execute("SELECT 1 FROM experiments WHERE id=?", (new_id,)).fetchone() or \
                    not db.execute("SELECT 1 FROM experiments WHERE id=?", (old_id,)).fetchone():
                return False
            db.execute("UPDATE experiments SET id=? WHERE id=?", (new_id, old_id))
            for table in ("epochs", "results", "environment"):
                db.execute(f"UPDATE {table} SET exp_id=? WHERE exp_id=?", (new_id, old_id))
            return True

    def get(self, exp_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM experiments WHERE id=?", (exp_id,)).fetchone()

    def claim(self, exp_id: str, owner: str, lease: float = LEASE_SECONDS,
              retry_failed: bool = False) -> bool:
        """Atomically take an experiment to run; False if done or held by a live runner."""
        with self.tx() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM experiments WHERE id=?",
                             (exp_id,)).fetchone()
            if row is None or row["status"] == "done":
                return False
            if row["status"] == "failed" and not retry_failed:
                return False
            if row["status"] == "running" and row["owner"] != owner and \
                    _owner_alive(row["owner"], row["heartbeat"], lease):
                return False
            db.execute("UPDATE experiments SET status='running', owner=?, heartbeat=?, reason=NULL,"
                       " attempts=attempts+1, updated=? WHERE id=?",
                       (owner, time.time(), time.time(), exp_id))
            return True

    def heartbeat(self, exp_id: str, owner: str) -> None:
        self.db.execute("UPDATE experiments SET heartbeat=? WHERE id=? AND owner=?",
                        (time.time(), exp_id, owner))

    def set_status(self, exp_id: str, status: str, reason: str | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE experiments SET status=?, reason=?, updated=?, owner=CASE WHEN ?='running'"
                       " THEN owner ELSE NULL END WHERE id=?",
                       (status, reason, time.time(), status, exp_id))

    def reset(self, exp_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE experiments SET status='pending', reason=NULL, owner=NULL WHERE id=?",
                       (exp_id,))
            for table in ("epochs", "results", "environment"):
                db.execute(f"DELETE FROM {table} WHERE exp_id=?", (exp_id,))

    def set_details(self, exp_id: str, details: dict) -> None:
        self.db.execute("UPDATE experiments SET details=? WHERE id=?", (json.dumps(details), exp_id))

    def add_epoch(self, exp_id: str, row: dict) -> None:
        cols = ["epoch", "phase", "train_loss", "train_acc", "val_acc", "val_loss", "lr",
                "seconds", "img_per_s"]
        self.db.execute(f"INSERT OR REPLACE INTO epochs (exp_id, {', '.join(cols)}) VALUES "
                        f"(?, {', '.join('?' * len(cols))})", [exp_id] + [row.get(c) for c in cols])

    def clear_epochs(self, exp_id: str, after: int = 0) -> None:
        self.db.execute("DELETE FROM epochs WHERE exp_id=? AND epoch>?", (exp_id, after))

    def finish(self, exp_id: str, result: dict, env: dict) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (
                exp_id, result.get("val_acc"), result["test_acc"], result.get("test_acc_no_tta"),
                json.dumps(result.get("per_class")), json.dumps(result.get("confusion")),
                json.dumps(result.get("classes")), result.get("best_epoch"),
                result.get("train_seconds"), result.get("total_seconds"), result.get("peak_mem_mb"),
                json.dumps(result.get("extra", {}))))
            db.execute("INSERT OR REPLACE INTO environment VALUES (?, ?)", (exp_id, json.dumps(env)))
            db.execute("UPDATE experiments SET status='done', reason=NULL, owner=NULL, updated=? "
                       "WHERE id=?", (time.time(), exp_id))

    # -------------------------------------------------------------- reading

    def epochs(self, exp_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM epochs WHERE exp_id=? ORDER BY epoch", (exp_id,))]

    def result(self, exp_id: str) -> dict | None:
        r = self.db.execute("SELECT * FROM results WHERE exp_id=?", (exp_id,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        for k in ("per_class", "confusion", "classes", "extra"):
            d[k] = json.loads(d[k]) if d[k] else None
        return d

    def environment(self, exp_id: str) -> dict | None:
        r = self.db.execute("SELECT info FROM environment WHERE exp_id=?", (exp_id,)).fetchone()
        return json.loads(r[0]) if r else None

    # -------------------------------------------------------------- studies

    def save_study(self, name: str, config_path: str, overrides: dict, members: list,
                   externals: list) -> None:
        self.db.execute("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?, ?)",
                        (name, config_path, json.dumps(overrides), json.dumps(members),
                         json.dumps(externals), time.time()))

    def save_study_run(self, name: str, overrides: dict, members: list) -> None:
        """Remember every override set a study ran with (`studies` keeps only the last)."""
        self.db.execute("CREATE TABLE IF NOT EXISTS study_runs (name TEXT NOT NULL, overrides "
                        "TEXT NOT NULL, members TEXT NOT NULL, updated REAL NOT NULL, "
                        "PRIMARY KEY (name, overrides))")
        self.db.execute("INSERT OR REPLACE INTO study_runs VALUES (?, ?, ?, ?)",
                        (name, json.dumps(overrides, sort_keys=True), json.dumps(members),
                         time.time()))

    def study_runs(self, name: str) -> list[dict]:
        """The override sets a study ran with, newest first: {overrides, members}."""
        try:
            rows = self.db.execute("SELECT overrides, members FROM study_runs WHERE name=? "
                                   "ORDER BY updated DESC", (name,)).fetchall()
        except sqlite3.OperationalError:  # a store written before the table existed
            rows = []
        runs = [{"overrides": json.loads(r[0]), "members": json.loads(r[1])} for r in rows]
        last = self.study(name)
        if last and all(r["overrides"] != last["overrides"] for r in runs):
            runs.insert(0, {"overrides": last["overrides"], "members": last["members"]})
        return runs

    def study(self, name: str | None = None) -> dict | None:
        q = ("SELECT * FROM studies WHERE name=?", (name,)) if name else \
            ("SELECT * FROM studies ORDER BY updated DESC LIMIT 1", ())
        r = self.db.execute(*q).fetchone()
        if r is None:
            return None
        d = dict(r)
        for k in ("overrides", "members", "externals"):
            d[k] = json.loads(d[k])
        return d

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        self.db.close()
