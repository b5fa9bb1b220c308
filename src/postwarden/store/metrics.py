"""The SQL behind the metrics endpoint's scrape-time gauges (issue 20): read only, small."""

from __future__ import annotations

import sqlite_utils


def audit_counts(db: sqlite_utils.Database, actions: tuple[str, ...]) -> dict[str, int]:
    """How many audit rows each of `actions` has (every lock, every admin's unlock)."""
    rows = db.execute(
        f"SELECT action, COUNT(*) FROM audit WHERE action IN ({', '.join('?' * len(actions))})"
        " GROUP BY action",
        list(actions),
    ).fetchall()
    found = {str(a): int(n) for a, n in rows}
    return {a: found.get(a, 0) for a in actions}


def locked_senders(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT COUNT(*) FROM locks").fetchone()[0])


def decision_counts(db: sqlite_utils.Database, since_id: int = 0) -> list[tuple[str, str]]:
    """(action, reasons JSON) of every decision after `since_id`: what the tests compare a
    scrape with."""
    return [
        (str(a), str(r or "[]"))
        for a, r in db.execute(
            "SELECT action, reasons FROM decisions WHERE id > ? ORDER BY id", [since_id]
        ).fetchall()
    ]
