"""The study store: experiments, per-epoch metrics and results, in SQLite or PostgreSQL.

One Store API, two backends:
- SQLite, one file in WAL mode: the embedded default for one machine. Refused on a network
  filesystem, where SQLite's locks and its shared-memory WAL index do not work across hosts.
- PostgreSQL (`postgresql://user@host:port/db`, through psycopg 3): runners on several machines.

Experiments are keyed by the hash of their resolved config. Several runners share one store: an
experiment is claimed in a transaction (SQLite: IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE SKIP
LOCKED) and each claim carries a random token. Every write a Store makes for an experiment it
claimed first checks that its token still holds, and raises ClaimLost if another runner took the
claim over. A running claim keeps a heartbeat; a claim whose runner died can be taken over (SQLite,
same host: its pid is gone; otherwise: its heartbeat is older than the lease).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ClaimLost, UserError
from .places import is_server_url
from .record import EPOCH_COLUMNS, RESULT_COLUMNS, RESULT_JSON, Description, Result

SCHEMA_VERSION = 4  # 2: experiments.token (fenced claims); 3: study_runs (every override set);
# 4: ledger (the wall time each study's grid took, for its time budget)
LEASE_SECONDS = 120.0  # default; TRANSFERLAB_LEASE_SECONDS overrides it (tests use a short one)
LEASE_ENV = "TRANSFERLAB_LEASE_SECONDS"
MOUNTS = Path("/proc/mounts")
# Filesystems shared between hosts, where SQLite's locking cannot be trusted.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "fuse.ceph",
                       "fuse.ceph-fuse", "lustre", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
                       "sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "davfs", "fuse.davfs"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT, config TEXT NOT NULL, details TEXT, owner TEXT, heartbeat {real},
    attempts INTEGER NOT NULL DEFAULT 0, created {real} NOT NULL, updated {real} NOT NULL,
    token TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    exp_id TEXT NOT NULL, epoch INTEGER NOT NULL, phase TEXT, train_loss {real}, train_acc {real},
    val_acc {real}, val_loss {real}, lr {real}, seconds {real}, img_per_s {real},
    PRIMARY KEY (exp_id, epoch));
CREATE TABLE IF NOT EXISTS results (
    exp_id TEXT PRIMARY KEY, val_acc {real}, test_acc {real}, test_acc_no_tta {real},
    per_class TEXT, confusion TEXT, classes TEXT, best_epoch INTEGER, train_seconds {real},
    total_seconds {real}, peak_mem_mb {real}, extra TEXT);
CREATE TABLE IF NOT EXISTS environment (exp_id TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY, config_path TEXT, overrides TEXT, members TEXT NOT NULL,
    externals TEXT NOT NULL, updated {real} NOT NULL);
CREATE TABLE IF NOT EXISTS study_runs (
    name TEXT NOT NULL, overrides TEXT NOT NULL, members TEXT NOT NULL, updated {real} NOT NULL,
    PRIMARY KEY (name, overrides));
CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, seconds {real} NOT NULL, updated {real} NOT NULL);
"""
COLUMNS = {  # epoch and result columns are the typed records' fields (record.py)
    "experiments": ["id", "name", "status", "reason", "config", "details", "owner", "heartbeat",
                    "attempts", "created", "updated", "token"],
    "epochs": ["exp_id", *EPOCH_COLUMNS],
    "results": ["exp_id", *RESULT_COLUMNS],
    "environment": ["exp_id", "info"],
    "studies": ["name", "config_path", "overrides", "members", "externals", "updated"],
}
KEYS = {"meta": ["key"], "experiments": ["id"], "epochs": ["exp_id", "epoch"],
        "results": ["exp_id"], "environment": ["exp_id"], "studies": ["name"],
        "study_runs": ["name", "overrides"], "ledger": ["key"]}


def lease_seconds() -> float:
    """How long a claim lives without a heartbeat before another runner may take it over."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{LEASE_ENV}={raw!r} is not a lease: give a positive number of seconds "
                        f"(default {LEASE_SECONDS:g})")
    return value


def owner_id() -> str:
    """hostname:pid:random, unique per runner even across containers that share a hostname."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _host_pid(owner: str) -> tuple[str, str]:
    parts = owner.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():  # host:pid:random
        return ":".join(parts[:-2]), parts[-2]
    host, _, pid = owner.rpartition(":")  # host:pid (stores written before the random part)
    return host, pid


def _owner_alive(owner: str | None, heartbeat: float | None, lease: float) -> bool:
    if not owner:
        return False
    host, pid = _host_pid(owner)
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


# ------------------------------------------------------------------ network filesystems

def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)  # /proc/mounts: \040 = " "


def mount_of(path: Path, mounts: Path = MOUNTS) -> tuple[str, str] | None:
    """(mount point, filesystem type) holding `path`: the longest mount point above it."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:  # not Linux, or no /proc: nothing to check against
        return None
    target = Path(path).resolve()
    best = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape_mount(fields[1]), fields[2]
        if (target == Path(point) or Path(point) in target.parents) and \
                (best is None or len(point) >= len(best[0])):  # a later mount on one point wins
            best = (point, fstype)
    return best


def refuse_network_filesystem(path: Path, mounts: Path = MOUNTS) -> None:
    found = mount_of(path, mounts)
    if found and found[1] in NETWORK_FILESYSTEMS:
        raise UserError(
            f"the SQLite store {path} is on a network filesystem ({found[1]} mounted at "
            f"{found[0]}): SQLite's locks do not work there, so runners could run an experiment "
            "twice or corrupt the store. For several machines use a PostgreSQL store: --store "
            "postgresql://user@host:5432/db (or [study] store, or TRANSFERLAB_STORE; pip install "
            "'transferlab[postgres]'), with the runs folder on the shared filesystem "
            "(--runs-dir). For one machine, put the SQLite store on a local disk: --store "
            "/local/path/transferlab.db --runs-dir SHARED/runs.")


# ------------------------------------------------------------------ backends

_UNWRITABLE = re.compile(r"readonly|read-only|unable to open|disk I/O error", re.IGNORECASE)


class _Sqlite:
    """One file; transactions are BEGIN IMMEDIATE, which serialises every writer."""
    real, lock_row, local_pids = "REAL", "", True

    def __init__(self, path, create: bool, mounts: Path):
        self.path = Path(path)
        refuse_network_filesystem(self.path, mounts)
        if not self.path.exists() and not create:
            raise UserError(f"no store at {self.path}; run a study first (transferlab run CONFIG)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                      check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as e:
            raise self._unwritable(e) from None
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=60000")

    def _unwritable(self, e: BaseException) -> UserError:
        return UserError(f"cannot open the SQLite store {self.path} for writing "
                         f"({type(e).__name__}: {e}); SQLite also writes its -wal and -shm files beside it, so the "
                         "folder must be writable. Pass --store PATH in a writable folder, or fix "
                         "the folder's permissions")

    def execute(self, sql: str, params=()):
        return self.db.execute(sql, params)

    @contextmanager
    def tx(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _UNWRITABLE.search(str(e)):
                raise self._unwritable(e) from None
            raise
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def exclusive(self) -> None:
        pass  # BEGIN IMMEDIATE is exclusive already

    def user_error(self, e: BaseException) -> UserError | None:
        if isinstance(e, sqlite3.OperationalError) and _UNWRITABLE.search(str(e)):
            return self._unwritable(e)
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
            return UserError(f"{self.path} is not a transferlab store ({e}); use another --store "
                             "path or move that file away")  # "file is not a database"
        return None

    def ready(self) -> None:  # only once the file is known to be ours
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        self.db.close()


_SECRET_PARAM = re.compile(r"(^|&)([^=&]*password=)[^&]*", re.IGNORECASE)


def mask_url(where) -> str:
    """`where` as it may be shown, logged or written: a server URL's password (user:password@
    and ?password= or ?sslpassword=) becomes ***; a file path is returned unchanged."""
    text = str(where)
    if not is_server_url(text):
        return text
    scheme, _, rest = text.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    path, q, query = tail.partition("?")
    if q:
        query, hash_, frag = query.partition("#")
        tail = f"{path}?{_SECRET_PARAM.sub(lambda m: m[1] + m[2] + '***', query)}{hash_}{frag}"
    return f"{scheme}://{netloc}{tail}"


class _Postgres:
    """A database server; autocommit outside explicit transactions, rows as dicts."""
    real, lock_row = "DOUBLE PRECISION", " FOR UPDATE SKIP LOCKED"
    local_pids = False  # runners elsewhere (or in containers that share a hostname): the lease decides

    def __init__(self, url: str, create: bool):
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise UserError("a PostgreSQL store needs psycopg 3: pip install 'transferlab[postgres]'"
                            " (make venv installs it)") from None
        self.psycopg, self.create = psycopg, create
        self.path = mask_url(url)  # what messages and `status` show
        try:
            self.db = psycopg.connect(url, autocommit=True, row_factory=dict_row,
                                      connect_timeout=15)
        except psycopg.Error as e:
            raise UserError(f"cannot connect to the PostgreSQL store {self.path}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}; check "
                            "that the server runs and that user, host, port and database are "
                            "right") from None

    def execute(self, sql: str, params=()):
        return self.db.execute(sql.replace("?", "%s"), params)

    @contextmanager
    def tx(self):
        with self.db.transaction():
            yield

    def tables(self) -> set[str]:
        return {r["table_name"] for r in self.db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def exclusive(self) -> None:
        """Inside a transaction: one runner at a time creates or migrates the schema."""
        self.db.execute("SELECT pg_advisory_xact_lock(7310524)")

    def user_error(self, e: BaseException) -> UserError | None:
        if isinstance(e, self.psycopg.Error):
            return UserError(f"PostgreSQL store {self.path}: {e}")
        return None

    def ready(self) -> None:
        pass

    def integrity(self) -> str:
        self.db.execute("SELECT count(*) FROM experiments").fetchone()  # the server checks pages
        return "ok"

    def close(self) -> None:
        self.db.close()


# ------------------------------------------------------------------ the store

class Store:
    """The study store; `where` is a SQLite file path or a postgresql:// URL."""

    def __init__(self, where: Path | str, create: bool = True, mounts: Path | None = None):
        self.where = where
        self.backend = _Postgres(where, create) if is_server_url(where) else \
            _Sqlite(where, create, mounts or MOUNTS)
        self.db = self.backend.db  # the raw connection (SQLite: sqlite3; PostgreSQL: psycopg)
        self.path = self.backend.path  # a file, or the URL without its password
        self.tokens: dict[str, str] = {}  # exp_id -> token of each claim this Store holds
        try:
            self._check_schema(create)  # before WAL: a file that is not ours must stay untouched
            self.backend.ready()
        except BaseException as e:
            self.backend.close()
            err = self.backend.user_error(e)
            if err is not None:
                raise err from None
            raise

    def _x(self, sql: str, params=()):
        return self.backend.execute(sql, params)

    # -------------------------------------------------------------- schema

    def _check_schema(self, create: bool = True) -> None:
        tables = self.backend.tables()
        if tables and "meta" not in tables:
            raise UserError(f"{self.path} is not a transferlab store (no meta table); use another "
                            "--store path or move that file away")
        if "meta" in tables:
            version = self._version()
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer transferlab (schema "
                                f"{version}, this one reads {SCHEMA_VERSION}); upgrade transferlab")
            if version < SCHEMA_VERSION:
                self._migrate(version)
            return
        if not create and is_server_url(self.where):
            raise UserError(f"no transferlab store in {self.path} yet; run a study first "
                            f"(transferlab run CONFIG --store {self.path})")
        with self.tx():
            self.backend.exclusive()
            for statement in _SCHEMA.format(real=self.backend.real).split(";"):
                if statement.strip():
                    self._x(statement)
            self._upsert("meta", {"key": "schema_version", "value": str(SCHEMA_VERSION)})

    def _version(self) -> int:
        row = self._x("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row["value"]) if row else 0

    def _migrate(self, version: int) -> None:
        """Upgrade an older store in place, one step at a time; nothing is dropped."""
        if version < 1:
            raise UserError(f"{self.path} has store schema {version}, which this transferlab cannot "
                            f"migrate to {SCHEMA_VERSION}; start a new store (--store PATH)")
        with self.tx():
            self.backend.exclusive()
            version = self._version()  # another runner may have migrated it meanwhile
            if version < 2:
                self._x("ALTER TABLE experiments ADD COLUMN token TEXT")
            if version < 3:
                self._x(f"CREATE TABLE IF NOT EXISTS study_runs (name TEXT NOT NULL, overrides "
                        f"TEXT NOT NULL, members TEXT NOT NULL, updated {self.backend.real} NOT "
                        f"NULL, PRIMARY KEY (name, overrides))")
            if version < 4:
                self._x(f"CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, seconds "
                        f"{self.backend.real} NOT NULL, updated {self.backend.real} NOT NULL)")
            if version < SCHEMA_VERSION:
                self._upsert("meta", {"key": "schema_version", "value": str(SCHEMA_VERSION)})

    @contextmanager
    def tx(self):
        with self.backend.tx():
            yield self

    def _upsert(self, table: str, row: dict, update: bool = True) -> None:
        cols, keys = list(row), KEYS[table]
        rest = [c for c in cols if c not in keys]
        action = "DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in rest) \
            if update and rest else "DO NOTHING"
        self._x(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT ({', '.join(keys)}) {action}", [row[c] for c in cols])

    # -------------------------------------------------------------- claims

    def claim(self, exp_id: str, owner: str, lease: float | None = None,
              retry_failed: bool = False) -> str | None:
        """Atomically take an experiment to run: its claim token, or None if it is done, failed
        (unless retry_failed), or held by a live runner."""
        lease = lease_seconds() if lease is None else lease
        token = secrets.token_hex(8)
        with self.tx():
            row = self._x("SELECT status, owner, heartbeat FROM experiments WHERE id=?"
                          + self.backend.lock_row, (exp_id,)).fetchone()
            if row is None or row["status"] == "done":  # (PostgreSQL: or being claimed right now)
                return None
            if row["status"] == "failed" and not retry_failed:
                return None
            if row["status"] == "running" and row["owner"] != owner and \
                    self._alive(row["owner"], row["heartbeat"], lease):
                return None
            now = time.time()
            self._x("UPDATE experiments SET status='running', owner=?, token=?, heartbeat=?, "
                    "reason=NULL, attempts=attempts+1, updated=? WHERE id=?",
                    (owner, token, now, now, exp_id))
        self.tokens[exp_id] = token
        return token

    def _alive(self, owner, heartbeat, lease: float) -> bool:
        if self.backend.local_pids:
            return _owner_alive(owner, heartbeat, lease)
        return bool(owner) and heartbeat is not None and time.time() - heartbeat < lease

    def hold(self, exp_id: str, token: str) -> None:
        """Write for a claim taken through another Store (the heartbeat's own connection)."""
        self.tokens[exp_id] = token

    def _fence(self, exp_id: str) -> None:
        """Refuse the write unless this Store's claim on exp_id still holds (and refresh it).

        Inside a transaction the UPDATE also locks the row, so no takeover can slip in between
        the check and the write. Writes for experiments this Store did not claim (--rerun,
        tools) are not fenced."""
        token = self.tokens.get(exp_id)
        if token is None:
            return
        cur = self._x("UPDATE experiments SET heartbeat=? WHERE id=? AND token=? AND "
                      "status='running'", (time.time(), exp_id, token))
        if cur.rowcount != 1:  # the token stays: every later write for it is refused too
            row = self.get(exp_id)
            now = "gone from the store" if row is None else \
                f"now {row['status']}" + (f", held by {row['owner']}" if row["owner"] else "")
            raise ClaimLost(f"this runner's claim on {row['name'] if row else exp_id} was taken "
                            f"over or reset ({now}); its writes are refused")

    def heartbeat(self, exp_id: str, owner: str) -> None:
        if exp_id in self.tokens:
            self._fence(exp_id)  # raises ClaimLost when the claim is gone
        else:
            self._x("UPDATE experiments SET heartbeat=? WHERE id=? AND owner=?",
                    (time.time(), exp_id, owner))

    # -------------------------------------------------------------- experiments

    def register(self, exp_id: str, name: str, config: dict) -> None:
        now = time.time()
        with self.tx():
            self._upsert("experiments", {"id": exp_id, "name": name, "config": json.dumps(config),
                                         "created": now, "updated": now}, update=False)
            self._x("UPDATE experiments SET name=? WHERE id=?", (name, exp_id))

    def adopt(self, old_id: str, new_id: str) -> bool:
        """Move an experiment's rows from an id an older transferlab computed to its current
        one; False when there is nothing to move or the new id exists already."""
        with self.tx():
            if self._x("SELECT 1 FROM experiments WHERE id=?", (new_id,)).fetchone() or \
                    not self._x("SELECT 1 FROM experiments WHERE id=?", (old_id,)).fetchone():
                return False
            self._x("UPDATE experiments SET id=? WHERE id=?", (new_id, old_id))
            for table in ("epochs", "results", "environment"):
                self._x(f"UPDATE {table} SET exp_id=? WHERE exp_id=?", (new_id, old_id))
            return True

    def get(self, exp_id: str):
        return self._x("SELECT * FROM experiments WHERE id=?", (exp_id,)).fetchone()

    def set_status(self, exp_id: str, status: str, reason: str | None = None) -> None:
        with self.tx():
            self._fence(exp_id)
            claim = "" if status == "running" else ", owner=NULL, token=NULL"
            self._x(f"UPDATE experiments SET status=?, reason=?, updated=?{claim} WHERE id=?",
                    (status, reason, time.time(), exp_id))
        if status != "running":
            self.tokens.pop(exp_id, None)

    def reset(self, exp_id: str) -> None:
        """Forget an experiment's work (its description too: a budgeted final's plan with it)."""
        with self.tx():
            self._x("UPDATE experiments SET status='pending', reason=NULL, owner=NULL, token=NULL, "
                    "details=NULL WHERE id=?", (exp_id,))
            for table in ("epochs", "results", "environment"):
                self._x(f"DELETE FROM {table} WHERE exp_id=?", (exp_id,))

    def set_details(self, exp_id: str, details: dict) -> None:
        with self.tx():
            self._fence(exp_id)
            self._x("UPDATE experiments SET details=? WHERE id=?", (json.dumps(details), exp_id))

    def add_epoch(self, exp_id: str, row: dict) -> None:
        with self.tx():
            self._fence(exp_id)
            self._upsert("epochs", {"exp_id": exp_id, **{c: row.get(c)
                                                         for c in COLUMNS["epochs"][1:]}})

    def clear_epochs(self, exp_id: str, after: int = 0) -> None:
        with self.tx():
            self._fence(exp_id)
            self._x("DELETE FROM epochs WHERE exp_id=? AND epoch>?", (exp_id, after))

    def finish(self, exp_id: str, result: Result | dict, env: dict) -> None:
        if not isinstance(result, Result):
            result = Result.from_dict(result)  # a result without test_acc fails here
        res = result.columns()
        row = {c: json.dumps(res[c]) if c in RESULT_JSON else res[c] for c in RESULT_COLUMNS}
        row["exp_id"] = exp_id
        with self.tx():
            self._fence(exp_id)
            self._upsert("results", row)
            self._upsert("environment", {"exp_id": exp_id, "info": json.dumps(env)})
            self._x("UPDATE experiments SET status='done', reason=NULL, owner=NULL, token=NULL, "
                    "updated=? WHERE id=?", (time.time(), exp_id))
        self.tokens.pop(exp_id, None)

    # -------------------------------------------------------------- reading

    def epochs(self, exp_id: str) -> list[dict]:
        return [dict(r) for r in self._x(
            "SELECT * FROM epochs WHERE exp_id=? ORDER BY epoch", (exp_id,))]

    def result(self, exp_id: str) -> dict | None:
        """The result row as stored (its JSON fields decoded); views use `result_record`."""
        r = self._x("SELECT * FROM results WHERE exp_id=?", (exp_id,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        for k in RESULT_JSON:
            d[k] = json.loads(d[k]) if d[k] else None
        return d

    def result_record(self, exp_id: str) -> Result | None:
        """The typed result of a finished experiment."""
        d = self.result(exp_id)
        return None if d is None else Result.from_dict({**d, "extra": d["extra"] or {}})

    def description(self, exp_id: str) -> Description | None:
        """The typed description recorded before the experiment trained (None: none yet)."""
        e = self.get(exp_id)
        return Description.from_dict(json.loads(e["details"])) if e and e["details"] else None

    def config(self, exp_id: str) -> dict:
        """The experiment's resolved config as registered ({} when it is not in the store)."""
        e = self.get(exp_id)
        return json.loads(e["config"]) if e else {}

    def environment(self, exp_id: str) -> dict | None:
        r = self._x("SELECT info FROM environment WHERE exp_id=?", (exp_id,)).fetchone()
        return json.loads(r["info"]) if r else None

    def throughputs(self) -> list[tuple[dict, float | None]]:
        """(config, mean training img/s) of every finished experiment with epochs."""
        rows = self._x("SELECT e.config AS config, AVG(p.img_per_s) AS s FROM experiments e "
                       "JOIN epochs p ON p.exp_id = e.id WHERE e.status = 'done' "
                       "GROUP BY e.id, e.config").fetchall()
        return [(json.loads(r["config"]), r["s"]) for r in rows]

    # -------------------------------------------------------------- the time ledger

    def ledger(self, key: str) -> float | None:
        """Wall seconds charged to `key` (a study's grid), None if nothing was charged yet."""
        r = self._x("SELECT seconds FROM ledger WHERE key=?", (key,)).fetchone()
        return None if r is None else float(r["seconds"])

    def charge(self, key: str, seconds: float) -> None:
        """Add wall seconds to `key`, atomically (several runners may charge one study)."""
        with self.tx():
            self._x("INSERT INTO ledger (key, seconds, updated) VALUES (?, ?, ?) ON CONFLICT "
                    "(key) DO UPDATE SET seconds = ledger.seconds + excluded.seconds, "
                    "updated = excluded.updated", (key, float(seconds), time.time()))

    # -------------------------------------------------------------- studies

    def save_study(self, name: str, config_path: str, overrides: dict, members: list,
                   externals: list) -> None:
        self._upsert("studies", {"name": name, "config_path": config_path,
                                 "overrides": json.dumps(overrides), "members": json.dumps(members),
                                 "externals": json.dumps(externals), "updated": time.time()})

    def save_study_run(self, name: str, overrides: dict, members: list) -> None:
        """Remember every override set a study ran with (`studies` keeps only the last)."""
        self._upsert("study_runs", {"name": name, "overrides": json.dumps(overrides, sort_keys=True),
                                    "members": json.dumps(members), "updated": time.time()})

    def study_runs(self, name: str) -> list[dict]:
        """The override sets a study ran with, newest first: {overrides, members}."""
        rows = self._x("SELECT overrides, members FROM study_runs WHERE name=? "
                       "ORDER BY updated DESC", (name,)).fetchall()
        runs = [{"overrides": json.loads(r["overrides"]), "members": json.loads(r["members"])}
                for r in rows]
        last = self.study(name)
        if last and all(r["overrides"] != last["overrides"] for r in runs):
            runs.insert(0, {"overrides": last["overrides"], "members": last["members"]})
        return runs

    def study(self, name: str | None = None) -> dict | None:
        q = ("SELECT * FROM studies WHERE name=?", (name,)) if name else \
            ("SELECT * FROM studies ORDER BY updated DESC LIMIT 1", ())
        r = self._x(*q).fetchone()
        if r is None:
            return None
        d = dict(r)
        for k in ("overrides", "members", "externals"):
            d[k] = json.loads(d[k])
        return d

    def integrity(self) -> str:
        return self.backend.integrity()

    def close(self) -> None:
        self.backend.close()


def open_store(where: Path | str, create: bool = True) -> Store:
    """The store at `where`: a postgresql:// URL, else a SQLite file path."""
    return Store(where, create=create)


# ------------------------------------------------------------------ copying between stores

_CLAIM = {"owner": None, "token": None, "heartbeat": None}


def _unit(store: Store, exp_id: str) -> dict | None:
    """Everything the store holds about one experiment, as plain rows."""
    row = store.get(exp_id)
    if row is None:
        return None
    one = lambda t: store._x(f"SELECT * FROM {t} WHERE exp_id=?", (exp_id,)).fetchone()  # noqa: E731
    return {"experiment": {c: row[c] for c in COLUMNS["experiments"]},
            "epochs": [{c: r[c] for c in COLUMNS["epochs"]} for r in store._x(
                "SELECT * FROM epochs WHERE exp_id=? ORDER BY epoch", (exp_id,))],
            "result": (lambda r: r and {c: r[c] for c in COLUMNS["results"]})(one("results")),
            "environment": (lambda r: r and {c: r[c] for c in COLUMNS["environment"]})(
                one("environment"))}


def _portable(unit: dict) -> dict:
    """A claim belongs to the store it was taken in: a running experiment travels as pending."""
    exp = dict(unit["experiment"])
    if exp["status"] == "running":
        exp.update(_CLAIM, status="pending", reason="copied while running; rerun to resume")
    return {**unit, "experiment": exp}


def _holds_work(unit: dict) -> bool:
    e = unit["experiment"]
    return e["status"] != "pending" or bool(unit["epochs"]) or unit["result"] is not None \
        or e["details"] is not None


def copy_study(src: Store, dst: Store, study: str | None = None,
               overwrite: bool = False) -> dict:
    """Copy a study's records (all studies if `study` is None) from `src` to `dst`.

    An experiment travels whole (its row, epochs, result, environment). One that `dst` already
    holds with other records is a conflict: refused unless `overwrite`. Identical records and
    experiments `dst` only registered (pending, no work yet) are not conflicts. One transaction."""
    if study is not None:
        st = src._x("SELECT * FROM studies WHERE name=?", (study,)).fetchall()
        if not st:
            known = [r["name"] for r in src._x("SELECT name FROM studies ORDER BY name")]
            raise UserError(f"no study {study!r} in {src.path}; it holds: "
                            f"{', '.join(known) or 'none'}")
        ids = [exp_id for _, exp_id in json.loads(st[0]["members"])]
    else:
        st = src._x("SELECT * FROM studies ORDER BY name").fetchall()
        ids = [r["id"] for r in src._x("SELECT id FROM experiments ORDER BY id")]
    studies = [{c: r[c] for c in COLUMNS["studies"]} for r in st]
    units, conflicts, same = [], [], 0
    for exp_id in ids:
        unit = _unit(src, exp_id)
        if unit is None:  # a member never registered (its study was saved by another version)
            continue
        unit = _portable(unit)
        there = _unit(dst, exp_id)
        if there == unit:
            same += 1
            continue
        if there is not None and _holds_work(there):
            conflicts.append(f"{unit['experiment']['name']} ({exp_id}: {there['experiment']['status']}"
                             f" there, {unit['experiment']['status']} here)")
        units.append(unit)
    for s in studies:
        r = dst._x("SELECT * FROM studies WHERE name=?", (s["name"],)).fetchone()
        keep = ("config_path", "overrides", "members", "externals")
        if r is not None and any(r[k] != s[k] for k in keep):
            conflicts.append(f"study {s['name']}")
    if conflicts and not overwrite:
        raise UserError(f"{dst.path} already holds other records for {len(conflicts)} of these: "
                        + "; ".join(conflicts[:10]) + ("; ..." if len(conflicts) > 10 else "")
                        + ". Nothing was copied; pass --overwrite to replace them with the "
                        "source's, or copy into another store")
    with dst.tx():
        for unit in units:
            exp_id = unit["experiment"]["id"]
            for table in ("epochs", "results", "environment"):
                dst._x(f"DELETE FROM {table} WHERE exp_id=?", (exp_id,))
            dst._upsert("experiments", unit["experiment"])
            for row in unit["epochs"]:
                dst._upsert("epochs", row)
            if unit["result"]:
                dst._upsert("results", unit["result"])
            if unit["environment"]:
                dst._upsert("environment", unit["environment"])
        for s in studies:
            dst._upsert("studies", s)
    return {"experiments": len(units), "unchanged": same, "studies": len(studies),
            "replaced": len(conflicts) if overwrite else 0}
