"""Claims on the SQLite store: network filesystems refused, the heartbeat from the claim on, a
failing heartbeat stops the work, owner ids, the lease setting, the schema migration."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_reliability import by_name, main_in, quick_config
from transferlab import store as store_mod, study as study_mod
from transferlab.errors import ClaimLost, UserError
from transferlab.store import SCHEMA_VERSION, Store, mount_of, owner_id


def fake_mounts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text("sysfs /sys sysfs rw 0 0\n/dev/sda1 / ext4 rw,relatime 0 0\n"
                    + "".join(line + "\n" for line in lines))
    return path


# ------------------------------------------------------------------ network filesystems

@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "fuse.sshfs", "ceph", "lustre",
                                    "glusterfs"])
def test_sqlite_store_on_a_network_filesystem_is_refused(tmp_path, fstype):
    mounts = fake_mounts(tmp_path, f"server:/export {tmp_path / 'share'} {fstype} rw 0 0")
    with pytest.raises(UserError, match=r"network filesystem.*postgresql://") as e:
        Store(tmp_path / "share" / "runs" / "transferlab.db", mounts=mounts)
    assert fstype in str(e.value) and "PostgreSQL" in str(e.value)
    assert not (tmp_path / "share" / "runs" / "transferlab.db").exists()


def test_the_longest_mount_point_decides(tmp_path):
    share, local = tmp_path / "share", tmp_path / "share" / "scratch space"
    mounts = fake_mounts(tmp_path, f"server:/export {share} nfs4 rw 0 0",
                         f"/dev/nvme0n1 {str(local).replace(' ', chr(92) + '040')} xfs rw 0 0",
                         f"server:/other {tmp_path / 'sharex'} nfs4 rw 0 0")
    assert mount_of(local / "runs" / "s.db", mounts) == (str(local), "xfs")
    Store(local / "runs" / "s.db", mounts=mounts).close()  # a local disk inside the share: fine
    assert mount_of(tmp_path / "share2" / "s.db", mounts) == ("/", "ext4")  # not a prefix match
    Store(tmp_path / "share2" / "s.db", mounts=mounts).close()
    with pytest.raises(UserError, match="network filesystem"):
        Store(share / "s.db", mounts=mounts)


def test_run_and_status_refuse_a_store_on_nfs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store_mod, "MOUNTS", fake_mounts(tmp_path, f"nas:/vol {tmp_path} nfs rw 0 0"))
    quick_config(tmp_path / "s.toml")
    for args in (("run", "s.toml"), ("status", "--store", tmp_path / "x.db")):
        rc, out, err = main_in(tmp_path, monkeypatch, capsys, *args)
        assert rc == 2 and "network filesystem (nfs" in err and "PostgreSQL" in err, err


# ------------------------------------------------------------------ heartbeat

def test_the_heartbeat_runs_from_the_claim_through_a_slow_decode(tmp_path, monkeypatch, capsys):
    lease = 0.8
    monkeypatch.setenv("TRANSFERLAB_LEASE_SECONDS", str(lease))
    quick_config(tmp_path / "s.toml")
    real = study_mod.make_splits
    seen = {}

    def slow_decode(*a, **k):
        db = tmp_path / "runs" / "transferlab.db"
        first = by_name(db)["main"]["updated"]  # the claim time
        time.sleep(2 * lease)  # longer than the lease
        con = sqlite3.connect(db)
        seen["beat"] = con.execute("SELECT heartbeat FROM experiments").fetchone()[0] - first
        con.close()
        return real(*a, **k)

    monkeypatch.setattr(study_mod, "make_splits", slow_decode)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    assert seen["beat"] > lease  # refreshed while the data was decoding
    e = by_name(tmp_path / "runs" / "transferlab.db")["main"]
    assert e["status"] == "done" and e["attempts"] == 1


def test_a_heartbeat_that_cannot_reach_the_store_gives_up_after_the_lease(tmp_path):
    beat = study_mod.Heartbeat(tmp_path, "e", "me", "token", lease=0.3)  # a folder: no database
    with beat:
        time.sleep(1.0)
        assert beat.lost and "could not refresh the claim" in beat.lost
        with pytest.raises(ClaimLost, match="could not refresh"):
            beat.check()


def test_a_heartbeat_notices_a_takeover(tmp_path):
    st = Store(tmp_path / "s.db")
    st.register("e", "e", {})
    token = st.claim("e", "me:1:aa")
    with study_mod.Heartbeat(tmp_path / "s.db", "e", "me:1:aa", token, lease=0.6) as beat:
        time.sleep(0.3)
        assert beat.lost is None
        st.reset("e")  # --rerun from another shell
        deadline = time.time() + 5
        while beat.lost is None and time.time() < deadline:
            time.sleep(0.05)
        assert beat.lost and "taken over or reset" in beat.lost
    st.close()


def test_a_failing_heartbeat_stops_the_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERLAB_LEASE_SECONDS", "0.6")
    quick_config(tmp_path / "s.toml", epochs=4)

    def locked(self, exp_id, owner):
        raise sqlite3.OperationalError("database is locked")

    real_add = Store.add_epoch

    def slow_add(self, exp_id, row):
        real_add(self, exp_id, row)
        time.sleep(0.5)  # epochs long enough for the lease to run out

    monkeypatch.setattr(Store, "heartbeat", locked)
    monkeypatch.setattr(Store, "add_epoch", slow_add)
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert "heartbeat failed (OperationalError: database is locked); retrying" in err
    assert "STOPPED" in out and "could not refresh the claim" in out, out + err
    db = tmp_path / "runs" / "transferlab.db"
    e = by_name(db)["main"]
    assert e["status"] == "running" and e["reason"] is None  # not failed
    con = sqlite3.connect(db)
    assert (con.execute("SELECT max(epoch) FROM epochs").fetchone()[0] or 0) < 4
    con.close()


# ------------------------------------------------------------------ owners, lease, schema

def test_owner_ids_are_unique_per_runner_and_dead_ones_are_recognised():
    a, b = owner_id(), owner_id()
    assert a != b and a.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    assert not store_mod._owner_alive(f"{host}:{gone.pid}:abcd", time.time(), 60)
    assert store_mod._owner_alive(f"{host}:{os.getpid()}:abcd", time.time(), 60)
    assert store_mod._owner_alive(f"other-host:{gone.pid}:abcd", time.time(), 60)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf"])
def test_a_bad_lease_setting_is_a_clear_error(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("TRANSFERLAB_LEASE_SECONDS", value)
    quick_config(tmp_path / "s.toml")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 2 and "TRANSFERLAB_LEASE_SECONDS" in err and "positive number of seconds" in err


def test_a_schema_1_store_is_migrated_and_keeps_its_work(tmp_path, monkeypatch, capsys):
    quick_config(tmp_path / "s.toml")
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0, out + err
    db = tmp_path / "runs" / "transferlab.db"
    con = sqlite3.connect(db)  # what transferlab wrote before claims carried tokens
    con.execute("ALTER TABLE experiments DROP COLUMN token")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    rc, out, err = main_in(tmp_path, monkeypatch, capsys, "run", "s.toml")
    assert rc == 0 and "done, skipped" in out, out + err
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert "token" in [r[1] for r in con.execute("PRAGMA table_info(experiments)")]
    con.close()
