"""Where things are, as the user named them: a store's address and the paths the report prints.

A store is a SQLite file or a PostgreSQL server URL; config, store and CLI all need to tell
them apart, so the test lives here, below all of them. Printed paths stay as the user typed
them (relative to the working folder): a report made on one machine names no folder of it.

Ground layer: the standard library only.
"""
from __future__ import annotations

from pathlib import Path

SERVER_SCHEMES = ("postgresql://", "postgres://")


def is_server_url(where) -> bool:
    return isinstance(where, str) and where.startswith(SERVER_SCHEMES)


def typed_path(path, base: Path | None = None) -> str:
    """A path as the user would type it: relative to `base` (the current folder) when inside
    it; a server URL stays the URL it is."""
    if path is None or "://" in str(path):
        return "" if path is None else str(path)
    path = Path(path)
    base = Path.cwd() if base is None else base
    try:
        return str(path.relative_to(base.resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)
