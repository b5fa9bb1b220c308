"""Opening the SQLite file the daemon, the CLI and the TUI share."""

from __future__ import annotations

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
    return sqlite_utils.Database(conn)
