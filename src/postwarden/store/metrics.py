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


def last_known_dns(db: sqlite_utils.Database) -> dict[tuple[str, str], str]:
    """(domain, area) -> the worst status of that area's latest run that was not "unknown":
    what `dns-check --notify-changes` compares a new run with (a DNS timeout is no change)."""
    rank = {"pass": 0, "warn": 1, "fail": 2}
    rows = db.execute(
        "SELECT c.domain, c.area, c.status FROM dns_checks c JOIN (SELECT domain, area,"
        " MAX(run_at) AS run_at FROM dns_checks WHERE status != 'unknown' GROUP BY domain, area) m"
        " ON c.domain = m.domain AND c.area = m.area AND c.run_at = m.run_at"
        " WHERE c.status != 'unknown'"
    ).fetchall()
    out: dict[tuple[str, str], str] = {}
    for domain, area, status in rows:
        key = (str(domain), str(area))
        if status in rank and rank[status] >= rank.get(out.get(key, "pass"), 0):
            out[key] = str(status)
    return out
