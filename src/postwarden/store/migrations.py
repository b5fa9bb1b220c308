"""The schema, as an ordered list of migrations. Append; never edit one that has shipped."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def _m001_decisions(db: sqlite_utils.Database) -> None:
    db.table("decisions").create(
        {
            "id": int,
            "time": str,  # ISO 8601 UTC, microseconds: sorts as text
            "hostname": str,
            "queue_id": str,
            "client_addr": str,
            "client_name": str,
            "helo": str,
            "identity": str,
            "mail_from": str,
            "rcpts": str,  # JSON list
            "header_from": str,
            "subject": str,
            "message_id": str,
            "size": int,
            "outbound": int,
            "action": str,
            "reasons": str,  # JSON list of {check, code, action, text}
            "signatures": str,  # JSON list of {d, s, a}
            "policy_hash": str,
            "duration_ms": float,
            "error": str,
        },
        pk="id",
        not_null={"time", "action"},
    )
    for cols in (["time"], ["queue_id"], ["identity", "time"], ["action", "time"]):
        db.table("decisions").create_index(cols)


def _m002_audit(db: sqlite_utils.Database) -> None:
    db.table("audit").create(
        {"id": int, "time": str, "actor": str, "action": str, "target": str, "note": str},
        pk="id",
        not_null={"time", "actor", "action"},
    )
    db.table("audit").create_index(["time"])


def _m003_daemon(db: sqlite_utils.Database) -> None:
    # One row per running daemon pid: how `postwarden reload` learns whether a reload was taken.
    db.table("daemon").create(
        {
            "pid": int,
            "started_at": str,
            "policy_hash": str,
            "reload_seq": int,
            "reload_at": str,
            "reload_ok": int,
            "reload_message": str,
        },
        pk="pid",
    )


def _m004_rate(db: sqlite_utils.Database) -> None:
    # One row per counted message; exact sliding windows are counts over `time`.
    db.table("rate_events").create(
        {"id": int, "identity": str, "time": float, "rcpts": int, "queue_id": str},
        pk="id",
        not_null={"identity", "time", "rcpts"},
    )
    db.table("rate_events").create_index(["identity", "time"])
    db.table("locks").create(
        {"identity": str, "locked_at": str, "cap": str, "queue_id": str}, pk="identity"
    )
    # The key that proves a lock notice is postwarden's own (shared by every process).
    db.table("secrets").create({"name": str, "value": str}, pk="name")
    db.table("secrets").insert({"name": "notice", "value": secrets.token_hex(32)})


def _m005_dns_checks(db: sqlite_utils.Database) -> None:
    # Every dns-check finding with its run's time: the TUI shows each domain's latest.
    db.table("dns_checks").create(
        {
            "id": int,
            "run_at": str,
            "domain": str,
            "area": str,
            "status": str,
            "message": str,
            "fix": str,
        },
        pk="id",
        not_null={"run_at", "domain", "area", "status"},
    )
    db.table("dns_checks").create_index(["domain", "run_at"])


def _m006_rate_running_totals(db: sqlite_utils.Database) -> None:
    # Running totals per sender: a window's count is two index lookups, not a scan of every
    # message the sender sent in it (which grew with the sender's volume).
    db.execute("ALTER TABLE rate_events ADD COLUMN cum_msgs INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE rate_events ADD COLUMN cum_rcpts INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE rate_events SET (cum_msgs, cum_rcpts) = (SELECT c.m, c.r FROM (SELECT id,"
        " COUNT(*) OVER w AS m, SUM(rcpts) OVER w AS r FROM rate_events"
        " WINDOW w AS (PARTITION BY identity ORDER BY time, id)) AS c WHERE c.id = rate_events.id)"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_rate_events_identity_time_id ON rate_events (identity, time, id)"
    )


def _m007_decision_headers(db: sqlite_utils.Database) -> None:
    # The header block as received, for the TUI's detail panel: a delivered message is gone
    # from Postfix, so the decision is the only place an admin can read its headers later.
    db.execute("ALTER TABLE decisions ADD COLUMN headers TEXT NOT NULL DEFAULT ''")


def _m008_writer_health(db: sqlite_utils.Database) -> None:
    # What the writer could not store: rows dropped on a full queue, rows an exception refused.
    db.table("daemon").add_column("rows_dropped", int, not_null_default=0)
    db.table("daemon").add_column("rows_failed", int, not_null_default=0)


# ---- reports (reports.md): DMARC aggregate and TLS reports -------------------------------------


def _m009_reports(db: sqlite_utils.Database) -> None:
    # One row per report, once per (kind, organisation, report id); the raw report gzipped.
    db.execute(
        "CREATE TABLE reports (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, org TEXT NOT NULL,"
        " report_id TEXT NOT NULL, org_name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '',"
        " domain TEXT NOT NULL, begin INTEGER NOT NULL, end INTEGER NOT NULL,"
        " policy TEXT NOT NULL DEFAULT '{}', received_at TEXT NOT NULL, source TEXT NOT NULL"
        " DEFAULT '', sha256 TEXT NOT NULL, raw_size INTEGER NOT NULL, raw BLOB NOT NULL,"
        " UNIQUE (kind, org, report_id))"
    )
    db.execute("CREATE INDEX idx_reports_domain_end ON reports (domain, end)")
    db.execute("CREATE INDEX idx_reports_end ON reports (end)")
    db.execute("CREATE INDEX idx_reports_received ON reports (received_at)")
    # A DMARC report's rows: one source IP and its results each.
    db.execute(
        "CREATE TABLE report_rows (id INTEGER PRIMARY KEY, report INTEGER NOT NULL,"
        " source_ip TEXT NOT NULL, count INTEGER NOT NULL, disposition TEXT NOT NULL,"
        " dkim TEXT NOT NULL, spf TEXT NOT NULL, header_from TEXT NOT NULL,"
        " envelope_from TEXT NOT NULL, dkim_auth TEXT NOT NULL, spf_auth TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX idx_report_rows_report ON report_rows (report)")
    # A TLS report's policies: sessions per policy domain, failures by result type.
    db.execute(
        "CREATE TABLE report_tls (id INTEGER PRIMARY KEY, report INTEGER NOT NULL,"
        " policy_type TEXT NOT NULL, policy_domain TEXT NOT NULL, successful INTEGER NOT NULL,"
        " failed INTEGER NOT NULL, failures TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX idx_report_tls_report ON report_tls (report)")
    # What could not be read, with why (never the content).
    db.execute(
        "CREATE TABLE report_refused (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL,"
        " source TEXT NOT NULL, reason TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX idx_report_refused_received ON report_refused (received_at)")
    # Reverse names of reported source IPs, cached ("" = no name).
    db.execute(
        "CREATE TABLE report_ptr (ip TEXT PRIMARY KEY, name TEXT NOT NULL, looked_up_at REAL NOT NULL)"
    )


def _m010_feedback(db: sqlite_utils.Database) -> None:
    # feedback.md: each feedback-loop report with what was read from it and the raw report
    # (gzipped); stored once per dedup key (a pipe(8) retry, a provider resending).
    db.execute(
        "CREATE TABLE feedback_reports (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL,"
        " source TEXT NOT NULL, dedup_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL,"
        " reason TEXT NOT NULL, feedback_type TEXT NOT NULL, reporter TEXT NOT NULL,"
        " user_agent TEXT NOT NULL, recipient TEXT NOT NULL, message_id TEXT NOT NULL,"
        " reported_from TEXT NOT NULL, reported_subject TEXT NOT NULL,"
        " reported_date TEXT NOT NULL, original_mail_from TEXT NOT NULL,"
        " decision_id INTEGER, queue_id TEXT NOT NULL, identity TEXT NOT NULL,"
        " from_domain TEXT NOT NULL, mail_from TEXT NOT NULL, notice_to TEXT NOT NULL,"
        " notified_at TEXT, parsed TEXT NOT NULL, sha256 TEXT NOT NULL, raw_size INTEGER NOT NULL,"
        " raw BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX idx_feedback_domain ON feedback_reports (from_domain, received_at)")
    db.execute("CREATE INDEX idx_feedback_pending ON feedback_reports (notice_to, notified_at)")
    # Suppressed recipients: per From domain, or "" for every domain on the server. Removed
    # entries are kept (removed_at set) for the record; the audit log says who did what.
    db.execute(
        "CREATE TABLE suppressions (id INTEGER PRIMARY KEY, address TEXT NOT NULL,"
        " domain TEXT NOT NULL, created_at TEXT NOT NULL, source TEXT NOT NULL,"
        " report INTEGER, reason TEXT NOT NULL, note TEXT NOT NULL, removed_at TEXT,"
        " removed_note TEXT NOT NULL DEFAULT '')"
    )
    # The look-up at RCPT: one index probe per recipient.
    db.execute(
        "CREATE UNIQUE INDEX idx_suppressions_active ON suppressions (address, domain)"
        " WHERE removed_at IS NULL"
    )
    # When each notice recipient was last mailed about complaints; alerts per domain and day.
    db.execute(
        "CREATE TABLE feedback_notices (notice_to TEXT PRIMARY KEY, last_sent_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE feedback_alerts (domain TEXT PRIMARY KEY, last_alert_at TEXT NOT NULL)"
    )
    # Outbound decisions by Message-ID: a report is joined to the decision of what it reports.
    db.execute("CREATE INDEX IF NOT EXISTS idx_decisions_message_id ON decisions (message_id)")


def _m011_streams(db: sqlite_utils.Database) -> None:
    """streams.md: each decision's stream; the releaser's schedule of held messages (the hold
    queue itself is the spool: a row names a queue id), its releases (the pace's sliding window)
    and each day's warm-up counts."""
    db.execute("ALTER TABLE decisions ADD COLUMN stream TEXT NOT NULL DEFAULT ''")
    db.execute(
        "CREATE TABLE paced (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue_id TEXT NOT NULL UNIQUE,"
        " held_at REAL NOT NULL, identity TEXT NOT NULL, pace INTEGER NOT NULL,"
        " charges TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'held', claimed_at REAL)"
    )
    db.execute(
        "CREATE TABLE pace_releases (id INTEGER PRIMARY KEY, time REAL NOT NULL,"
        " queue_id TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX idx_pace_releases_time ON pace_releases (time)")
    db.execute(
        "CREATE TABLE warmup_counts (day TEXT NOT NULL, key TEXT NOT NULL, grp TEXT NOT NULL,"
        " rcpts INTEGER NOT NULL, PRIMARY KEY (day, key, grp))"
    )


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_decisions", _m001_decisions),
    ("002_audit", _m002_audit),
    ("003_daemon", _m003_daemon),
    ("004_rate", _m004_rate),
    ("005_dns_checks", _m005_dns_checks),
    ("006_rate_running_totals", _m006_rate_running_totals),
    ("007_decision_headers", _m007_decision_headers),
    ("008_writer_health", _m008_writer_health),
    ("009_reports", _m009_reports),  # reports.md
    ("010_feedback", _m010_feedback),  # feedback.md
    ("011_streams", _m011_streams),  # streams.md
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet applied, each in its own transaction; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            # Two processes starting at once: the second waits on this lock, then skips.
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            fn(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                [name, datetime.now(UTC).isoformat()],
            )
        applied.append(name)
    return applied
