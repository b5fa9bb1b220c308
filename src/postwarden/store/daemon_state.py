"""The daemon's own rows: its notice key, its reload status, what its writer could not store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlite_utils

if TYPE_CHECKING:
    from postwarden.store.writer import Op


def notice_secret(db: sqlite_utils.Database) -> str:
    row = db.execute("SELECT value FROM secrets WHERE name = 'notice'").fetchone()
    return str(row[0]) if row else ""


def status_op(
    pid: int, started_at: str, at: str, policy_hash: str, seq: int, ok: bool, message: str
) -> Op:
    """A writer op recording the daemon's reload status (read by `postwarden reload`)."""

    def op(db: sqlite_utils.Database) -> None:
        db.conn.execute(
            "INSERT INTO daemon (pid, started_at, policy_hash, reload_seq, reload_at, reload_ok,"
            " reload_message) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pid) DO UPDATE SET"
            " policy_hash=excluded.policy_hash, reload_seq=excluded.reload_seq,"
            " reload_at=excluded.reload_at, reload_ok=excluded.reload_ok,"
            " reload_message=excluded.reload_message",
            [pid, started_at, policy_hash, seq, at, int(ok), message],
        )

    return op


def reload_status(db: sqlite_utils.Database, pid: int) -> tuple[int, int, str] | None:
    row = db.execute(
        "SELECT reload_seq, reload_ok, reload_message FROM daemon WHERE pid = ?", [pid]
    ).fetchone()
    return (int(row[0]), int(row[1]), str(row[2])) if row else None


def latest_policy_hash(db: sqlite_utils.Database) -> str:
    """The policy the daemon last started or reloaded with ("" before any): what
    `postwarden releaser` follows, so that `postwarden reload` reloads it too."""
    row = db.execute(
        "SELECT policy_hash FROM daemon ORDER BY COALESCE(reload_at, started_at) DESC LIMIT 1"
    ).fetchone()
    return str(row[0] or "") if row else ""


@dataclass(frozen=True)
class WriterHealth:
    pid: int
    started_at: str
    rows_dropped: int
    rows_failed: int


def writer_health(db: sqlite_utils.Database) -> list[WriterHealth]:
    """Every daemon that lost decision rows, newest first."""
    rows = db.execute(
        "SELECT pid, started_at, rows_dropped, rows_failed FROM daemon"
        " WHERE rows_dropped > 0 OR rows_failed > 0 ORDER BY started_at DESC"
    ).fetchall()
    return [WriterHealth(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]
