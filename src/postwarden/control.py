"""Talking to the running daemon: `postwarden reload` and the TUI's save-then-reload."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from postwarden import EX_CONFIG, EX_OK, EX_TEMPFAIL
from postwarden.config import Config
from postwarden.store import daemon_state
from postwarden.store.db import open_db


def daemon_status(db_path: str, pid: int) -> tuple[int, int, str] | None:
    try:
        return daemon_state.reload_status(open_db(db_path, readonly=True), pid)
    except sqlite3.Error:
        return None


def reload(cfg: Config, wait: float = 10.0) -> tuple[int, str]:
    """SIGUSR1 to the daemon named by the pidfile, then wait for it to say, through the
    database, whether it took the new policy: (exit code, what to tell the admin)."""
    pidfile = Path(cfg.daemon.milter.pidfile)
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return EX_TEMPFAIL, f"postwarden is not running (no live pid in {pidfile})"
    before = daemon_status(cfg.daemon.store.database, pid)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = daemon_status(cfg.daemon.store.database, pid)
        if status and (before is None or status[0] > before[0]):
            if status[1]:
                return EX_OK, "reloaded: " + status[2]
            return EX_CONFIG, "refused: " + status[2]
        time.sleep(0.1)
    return EX_TEMPFAIL, f"sent SIGUSR1 to {pid}, but it did not confirm within {wait:g}s"
