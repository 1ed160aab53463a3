"""A throwaway PostgreSQL server for the tests.

Debian's `postgresql` package (the Makefile installs it), a temporary data folder and a free
local port. `initdb` refuses to run as root, so as root the server runs as the `postgres`
system user the package creates. Every failure raises PgServerError with the reason, which the
tests report as a failure, never a skip.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PgServerError(RuntimeError):
    pass


def find_bindir() -> Path:
    override = os.environ.get("TRANSFERLAB_PG_BINDIR")
    found = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
        if Path(p).parent.name.isdigit() else 0)
    for d in reversed(found):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    raise PgServerError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install "
                        "Debian's postgresql package (make venv does it as root: apt-get install "
                        "postgresql), or set TRANSFERLAB_PG_BINDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="transferlab-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_root = os.geteuid() == 0
        self.started = False

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        if self.as_root:  # initdb and the server refuse root
            runuser = shutil.which("runuser")
            cmd = (runuser, "-u", "postgres", "--", *cmd) if runuser else \
                ("su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd))
        try:
            p = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PgServerError(f"{' '.join(cmd)}: {e}") from None
        if p.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise PgServerError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}"
                                f"\nserver log:\n{log}")

    def start(self) -> "PgServer":
        if self.as_root:
            import pwd
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgServerError("running as root but there is no 'postgres' system user to "
                                    "run the server as (Debian's postgresql package creates "
                                    "it)") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as f:  # a test server: speed over safety
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = ''\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nmax_connections = 100\n")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", "60", "start")
        self.started = True
        return self

    def new_database(self) -> str:
        """A fresh, empty database on this server; returns its URL."""
        import psycopg
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        try:
            if self.started:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
