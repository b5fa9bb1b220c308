"""The SQL of the services that read and write beside the decisions: the audit trail, the
dns-check findings, and decision look-ups by queue id."""

from __future__ import annotations

from collections.abc import Iterable

import sqlite_utils


def max_decision_id(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])


def decisions_by_queue_id(
    db: sqlite_utils.Database, queue_ids: list[str]
) -> list[tuple[str, str, str, str, str, str, str]]:
    """(queue_id, time, action, identity, header_from, subject, reasons JSON), oldest first."""
    out: list[tuple[str, str, str, str, str, str, str]] = []
    for i in range(0, len(queue_ids), 500):
        chunk = queue_ids[i : i + 500]
        out += db.execute(
            "SELECT queue_id, time, action, identity, header_from, subject, reasons FROM decisions"
            f" WHERE queue_id IN ({', '.join('?' * len(chunk))}) ORDER BY id",
            chunk,
        ).fetchall()
    return out


def add_audit(
    db: sqlite_utils.Database, when: str, who: str, action: str, targets: list[str], note: str
) -> None:
    with db.conn:
        db.conn.executemany(
            "INSERT INTO audit (time, actor, action, target, note) VALUES (?, ?, ?, ?, ?)",
            [(when, who, action, t, note) for t in targets],
        )


def add_dns_findings(
    db: sqlite_utils.Database, run_at: str, rows: Iterable[tuple[str, str, str, str, str]]
) -> None:
    """(domain, area, status, message, fix) rows of one run."""
    with db.conn:
        db.conn.executemany(
            "INSERT INTO dns_checks (run_at, domain, area, status, message, fix)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(run_at, *row) for row in rows],
        )


def latest_dns_findings(db: sqlite_utils.Database) -> list[tuple[str, str, str, str, str, str]]:
    """(domain, run_at, area, status, message, fix) of each domain's most recent run."""
    return list(
        db.execute(
            "SELECT c.domain, c.run_at, c.area, c.status, c.message, c.fix FROM dns_checks c"
            " JOIN (SELECT domain, MAX(run_at) AS run_at FROM dns_checks GROUP BY domain) m"
            " ON c.domain = m.domain AND c.run_at = m.run_at ORDER BY c.id"
        ).fetchall()
    )
