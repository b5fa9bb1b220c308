"""The SQL of feedback-loop reports, suppressions and complaint rates (feedback.md): storing a
report once, joining it to postwarden's own decision, the suppression list and its look-up at
RCPT, complaint notices gathered per interval, and the counts `feedback stats` shows."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from postwarden.policy.model import Suppression
from postwarden.store.db import open_db

# Complaints: the types that suppress and that count in a domain's complaint rate.
COMPLAINT_TYPES = ("abuse", "fraud", "virus")

REPORT_COLS = (
    "received_at",
    "source",
    "dedup_key",
    "status",
    "reason",
    "feedback_type",
    "reporter",
    "user_agent",
    "recipient",
    "message_id",
    "reported_from",
    "reported_subject",
    "reported_date",
    "original_mail_from",
    "decision_id",
    "queue_id",
    "identity",
    "from_domain",
    "mail_from",
    "notice_to",
    "parsed",
    "sha256",
    "raw_size",
    "raw",
)


def insert_report(db: sqlite_utils.Database, record: dict[str, Any]) -> tuple[int, bool]:
    """Store a report once per dedup key: (id, True) when new, else (stored id, False)."""
    with db.conn:
        cur = db.conn.execute(
            f"INSERT OR IGNORE INTO feedback_reports ({', '.join(REPORT_COLS)})"
            f" VALUES ({', '.join('?' * len(REPORT_COLS))})",
            [record[c] for c in REPORT_COLS],
        )
        if cur.rowcount == 0:
            row = db.conn.execute(
                "SELECT id FROM feedback_reports WHERE dedup_key = ?", [record["dedup_key"]]
            ).fetchone()
            return int(row[0]), False
        return int(cur.lastrowid or 0), True


def find_decision(
    db: sqlite_utils.Database, message_id: str, queue_ids: list[str]
) -> dict[str, Any] | None:
    """postwarden's own outbound decision of a reported message: by its Message-ID, else by a
    queue id read from the reported copy's Received headers. The latest accepted one wins."""
    cols = "id, time, queue_id, identity, mail_from, header_from, subject, message_id, rcpts"
    conn = db.conn
    if message_id:
        row = conn.execute(
            f"SELECT {cols} FROM decisions WHERE message_id = ? AND outbound = 1"
            " AND action IN ('accept', 'quarantine') ORDER BY id DESC LIMIT 1",
            [message_id],
        ).fetchone()
        if row is not None:
            return dict(zip(cols.split(", "), row, strict=True))
    for qid in queue_ids[:8]:
        row = conn.execute(
            f"SELECT {cols} FROM decisions WHERE queue_id = ? AND outbound = 1"
            " ORDER BY id DESC LIMIT 1",
            [qid],
        ).fetchone()
        if row is not None:
            return dict(zip(cols.split(", "), row, strict=True))
    return None


def suppress(
    db: sqlite_utils.Database,
    address: str,
    domain: str,
    created_at: str,
    source: str,
    reason: str,
    note: str = "",
    report: int | None = None,
) -> bool:
    """Add an active suppression; False when the same one is already active."""
    with db.conn:
        cur = db.conn.execute(
            "INSERT OR IGNORE INTO suppressions (address, domain, created_at, source, report,"
            " reason, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [address.lower(), domain.lower(), created_at, source, report, reason, note],
        )
        return cur.rowcount > 0


def unsuppress(
    db: sqlite_utils.Database, address: str, domain: str | None, removed_at: str, note: str = ""
) -> int:
    """End the active suppressions of `address` for `domain` ("" = the server-wide one; None =
    every one). Returns how many ended."""
    sql = "UPDATE suppressions SET removed_at = ?, removed_note = ? WHERE address = ?"
    args: list[Any] = [removed_at, note, address.lower()]
    if domain is not None:
        sql += " AND domain = ?"
        args.append(domain.lower())
    with db.conn:
        return db.conn.execute(sql + " AND removed_at IS NULL", args).rowcount


def suppressions(db: sqlite_utils.Database, domain: str | None = None) -> list[dict[str, Any]]:
    """Active suppressions, newest first (`domain` also shows the server-wide ones)."""
    return active_rows(db.conn, domain)


def active_rows(conn: sqlite3.Connection, domain: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT s.id, s.address, s.domain, s.created_at, s.source, s.reason, s.note, s.report,"
        " r.feedback_type, r.reporter, r.message_id FROM suppressions s"
        " LEFT JOIN feedback_reports r ON r.id = s.report WHERE s.removed_at IS NULL"
    )
    args: list[Any] = []
    if domain is not None:
        sql += " AND s.domain IN (?, '')"
        args.append(domain.lower())
    cur = conn.execute(sql + " ORDER BY s.created_at DESC, s.id DESC", args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def active_for(conn: sqlite3.Connection, addresses: list[str]) -> list[Suppression]:
    """Every active suppression of these recipients (any domain): one index probe each."""
    out: list[Suppression] = []
    for address in dict.fromkeys(a.lower() for a in addresses):
        for row in conn.execute(
            "SELECT address, domain, created_at, reason FROM suppressions"
            " WHERE address = ? AND removed_at IS NULL",
            [address],
        ):
            out.append(Suppression(*row))
    return out


class SuppressionLookup:
    """The milter's read-only look-up, from a pool of connections: libmilter runs each SMTP
    session on a thread of its own, so a connection per thread was opened (and the schema
    read, every statement prepared again) for nearly every message."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self.opened = 0  # connections opened so far (tests: they are reused)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = open_db(self.path, readonly=True).conn
            self.opened += 1
        try:
            yield conn
        finally:
            with self._lock:
                self._idle.append(conn)

    def at_rcpt(self, address: str, domain: str) -> Suppression | None:
        """The suppression that refuses `address` for mail from `domain`, or None."""
        for s in self.for_rcpts([address]):
            if s.applies_to(domain):
                return s
        return None

    def for_rcpts(self, addresses: list[str]) -> list[Suppression]:
        with self._conn() as conn:
            return active_for(conn, addresses)


# ---- where the list lives: this database, or the shared store ([store].shared) --------------


class RcptLookup(Protocol):
    """What the milter asks at RCPT and end-of-message: SuppressionLookup (this database) or
    store.shared.RedisSuppressions (every server's list, [store].shared)."""

    def at_rcpt(self, address: str, domain: str) -> Suppression | None: ...
    def for_rcpts(self, addresses: list[str]) -> list[Suppression]: ...


class SuppressionList(RcptLookup, Protocol):
    """The suppression list as `postwarden suppression`, `feedback ingest` and the TUI use it."""

    def suppress(
        self,
        address: str,
        domain: str,
        created_at: str,
        source: str,
        reason: str,
        note: str = "",
        report: int | None = None,
        details: dict[str, str] | None = None,
    ) -> bool: ...

    def unsuppress(
        self, address: str, domain: str | None, removed_at: str, note: str = ""
    ) -> int: ...

    def entries(self, domain: str | None = None) -> list[dict[str, Any]]: ...


class LocalSuppressions:
    """SuppressionList over this server's database (no [store].shared): removed entries stay
    as history (removed_at). `details` (the report's type, reporter, Message-ID) come from
    the joined report here, so they are not stored twice."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def suppress(
        self,
        address: str,
        domain: str,
        created_at: str,
        source: str,
        reason: str,
        note: str = "",
        report: int | None = None,
        details: dict[str, str] | None = None,
    ) -> bool:
        return suppress(self.db, address, domain, created_at, source, reason, note, report)

    def unsuppress(self, address: str, domain: str | None, removed_at: str, note: str = "") -> int:
        return unsuppress(self.db, address, domain, removed_at, note)

    def entries(self, domain: str | None = None) -> list[dict[str, Any]]:
        return suppressions(self.db, domain)

    def at_rcpt(self, address: str, domain: str) -> Suppression | None:
        for s in active_for(self.db.conn, [address]):
            if s.applies_to(domain):
                return s
        return None

    def for_rcpts(self, addresses: list[str]) -> list[Suppression]:
        return active_for(self.db.conn, addresses)


# ---- complaint notices ------------------------------------------------------------------------


def pending_notices(db: sqlite_utils.Database) -> dict[str, list[dict[str, Any]]]:
    """Complaints not yet told, by notice recipient."""
    cur = db.conn.execute(
        "SELECT id, received_at, feedback_type, reporter, recipient, message_id, reported_from,"
        " reported_subject, reported_date, from_domain, notice_to FROM feedback_reports"
        " WHERE notified_at IS NULL AND notice_to != '' AND status = 'stored'"
        f" AND feedback_type IN ({', '.join('?' * len(COMPLAINT_TYPES))}) ORDER BY id",
        list(COMPLAINT_TYPES),
    )
    names = [d[0] for d in cur.description]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in cur.fetchall():
        rec = dict(zip(names, row, strict=True))
        out.setdefault(rec["notice_to"], []).append(rec)
    return out


def last_notice(db: sqlite_utils.Database, notice_to: str) -> str | None:
    row = db.conn.execute(
        "SELECT last_sent_at FROM feedback_notices WHERE notice_to = ?", [notice_to]
    ).fetchone()
    return str(row[0]) if row else None


def notice_sent(db: sqlite_utils.Database, notice_to: str, ids: list[int], when: str) -> None:
    with db.conn:
        db.conn.execute(
            "INSERT INTO feedback_notices (notice_to, last_sent_at) VALUES (?, ?)"
            " ON CONFLICT (notice_to) DO UPDATE SET last_sent_at = excluded.last_sent_at",
            [notice_to, when],
        )
        db.conn.executemany(
            "UPDATE feedback_reports SET notified_at = ? WHERE id = ?", [(when, i) for i in ids]
        )


# ---- complaint rates --------------------------------------------------------------------------


def complaints_since(db: sqlite_utils.Database, since: str) -> dict[str, int]:
    """Complaints (abuse, fraud, virus) received since `since`, per From domain."""
    cur = db.conn.execute(
        "SELECT from_domain, COUNT(*) FROM feedback_reports WHERE received_at >= ?"
        " AND status = 'stored' AND from_domain != ''"
        f" AND feedback_type IN ({', '.join('?' * len(COMPLAINT_TYPES))}) GROUP BY from_domain",
        [since, *COMPLAINT_TYPES],
    )
    return {str(d): int(n) for d, n in cur.fetchall()}


def delivered_since(db: sqlite_utils.Database, since: str) -> list[tuple[str, int]]:
    """Outbound messages accepted since `since`, per header From as written (the caller takes
    the domain): the null sender's (postwarden's notices, bounces) are not counted."""
    cur = db.conn.execute(
        "SELECT header_from, COUNT(*) FROM decisions WHERE time >= ? AND outbound = 1"
        " AND action IN ('accept', 'quarantine') AND mail_from != '' GROUP BY header_from",
        [since],
    )
    return [(str(h or ""), int(n)) for h, n in cur.fetchall()]


def last_alert(db: sqlite_utils.Database, domain: str) -> str | None:
    row = db.conn.execute(
        "SELECT last_alert_at FROM feedback_alerts WHERE domain = ?", [domain]
    ).fetchone()
    return str(row[0]) if row else None


def alert_sent(db: sqlite_utils.Database, domain: str, when: str) -> None:
    with db.conn:
        db.conn.execute(
            "INSERT INTO feedback_alerts (domain, last_alert_at) VALUES (?, ?)"
            " ON CONFLICT (domain) DO UPDATE SET last_alert_at = excluded.last_alert_at",
            [domain, when],
        )


def reports(db: sqlite_utils.Database, limit: int = 100) -> list[dict[str, Any]]:
    """The latest reports, without the raw copy."""
    cols = [c for c in REPORT_COLS if c != "raw"]
    cur = db.conn.execute(
        f"SELECT id, {', '.join(cols)} FROM feedback_reports ORDER BY id DESC LIMIT ?", [limit]
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
