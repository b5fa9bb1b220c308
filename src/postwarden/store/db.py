"""Opening the SQLite file the daemon, the CLI and the TUI share."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 10_000


def open_db(path: str | Path, *, readonly: bool = False) -> sqlite_utils.Database:
    """WAL, so readers (CLI, TUI) never block the writer, and a busy timeout, so a second
    writer (a CLI action, a second daemon) waits rather than failing with "database is locked"."""
    path = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        _keep_owner(path)
    return sqlite_utils.Database(conn)


def _keep_owner(path: Path) -> None:
    """An admin's command or the TUI, run as root, may be the first to open the database since
    the daemon stopped: SQLite then creates the -wal and -shm files owned by root, and the
    daemon's own user could no longer write. Give them the database file's owner."""
    if os.geteuid() != 0:
        return
    owner = path.stat()
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        try:
            st = side.stat()
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(side, owner.st_uid, owner.st_gid)
        except FileNotFoundError:
            continue
