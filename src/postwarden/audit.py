"""Who did what to the quarantine and the locks, and when."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

import sqlite_utils


def actor() -> str:
    """The admin behind the command: the sudo user when run through sudo."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def record(
    db: sqlite_utils.Database, action: str, targets: list[str], note: str = "", who: str = ""
) -> None:
    now = datetime.now(UTC).isoformat()
    who = who or actor()
    with db.conn:
        db.conn.executemany(
            "INSERT INTO audit (time, actor, action, target, note) VALUES (?, ?, ?, ?, ?)",
            [(now, who, action, t, note) for t in targets],
        )
