"""The SQL of DMARC aggregate and TLS reports (reports.md): storing once per organisation and
report id, pruning by retention, and the reads `postwarden reports` and the TUI share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils


@dataclass(frozen=True)
class StoredRow:
    """One DMARC report row with its report's facts, as the summary reads it."""

    report: int
    org_name: str
    report_id: str
    domain: str
    begin: int
    end: int
    policy: dict[str, Any]
    source_ip: str
    count: int
    disposition: str
    dkim: str
    spf: str
    header_from: str


def insert_report(
    db: sqlite_utils.Database,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    tls: list[dict[str, Any]],
) -> tuple[int, bool]:
    """Store a report and its rows in one transaction. Returns (id, True) when stored, or the
    id already stored for the same (kind, org, report_id) and False."""
    cols = (
        "kind",
        "org",
        "report_id",
        "org_name",
        "email",
        "domain",
        "begin",
        "end",
        "policy",
        "received_at",
        "source",
        "sha256",
        "raw_size",
        "raw",
    )
    with db.conn:
        cur = db.conn.execute(
            f"INSERT OR IGNORE INTO reports ({', '.join(cols)})"
            f" VALUES ({', '.join('?' * len(cols))})",
            [report[c] for c in cols],
        )
        if cur.rowcount == 0:
            found = db.conn.execute(
                "SELECT id FROM reports WHERE kind = ? AND org = ? AND report_id = ?",
                [report["kind"], report["org"], report["report_id"]],
            ).fetchone()
            return int(found[0]), False
        rid = int(cur.lastrowid or 0)
        db.conn.executemany(
            "INSERT INTO report_rows (report, source_ip, count, disposition, dkim, spf,"
            " header_from, envelope_from, dkim_auth, spf_auth) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    rid,
                    r["source_ip"],
                    r["count"],
                    r["disposition"],
                    r["dkim"],
                    r["spf"],
                    r["header_from"],
                    r["envelope_from"],
                    json.dumps(r["dkim_auth"]),
                    json.dumps(r["spf_auth"]),
                )
                for r in rows
            ],
        )
        db.conn.executemany(
            "INSERT INTO report_tls (report, policy_type, policy_domain, successful, failed,"
            " failures) VALUES (?,?,?,?,?,?)",
            [
                (
                    rid,
                    t["policy_type"],
                    t["policy_domain"],
                    t["successful"],
                    t["failed"],
                    json.dumps(t["failures"], sort_keys=True),
                )
                for t in tls
            ],
        )
    return rid, True


def insert_refused(
    db: sqlite_utils.Database, received_at: str, source: str, reason: str, size: int, sha256: str
) -> None:
    with db.conn:
        db.conn.execute(
            "INSERT INTO report_refused (received_at, source, reason, size, sha256)"
            " VALUES (?,?,?,?,?)",
            [received_at, source, reason, size, sha256],
        )


def prune(db: sqlite_utils.Database, before_iso: str) -> int:
    """Delete reports received before `before_iso` (ISO UTC), with their rows, and refusals
    received before it. Returns how many reports went."""
    with db.conn:
        ids = [
            r[0]
            for r in db.conn.execute(
                "SELECT id FROM reports WHERE received_at < ?", [before_iso]
            ).fetchall()
        ]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            db.conn.execute(f"DELETE FROM report_rows WHERE report IN ({marks})", chunk)
            db.conn.execute(f"DELETE FROM report_tls WHERE report IN ({marks})", chunk)
            db.conn.execute(f"DELETE FROM reports WHERE id IN ({marks})", chunk)
        db.conn.execute("DELETE FROM report_refused WHERE received_at < ?", [before_iso])
    return len(ids)


def _window(since: int | None, until: int | None, domain: str | None) -> tuple[str, list[Any]]:
    """A report counts when its date range overlaps the window."""
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("r.end >= ?")
        args.append(since)
    if until is not None:
        where.append("r.begin < ?")
        args.append(until)
    if domain:
        where.append("r.domain = ?")
        args.append(domain.lower().rstrip("."))
    return (" AND " + " AND ".join(where)) if where else "", args


def dmarc_rows(
    db: sqlite_utils.Database,
    since: int | None = None,
    until: int | None = None,
    domain: str | None = None,
) -> list[StoredRow]:
    cond, args = _window(since, until, domain)
    sql = (
        "SELECT r.id, r.org_name, r.report_id, r.domain, r.begin, r.end, r.policy,"
        " w.source_ip, w.count, w.disposition, w.dkim, w.spf, w.header_from"
        " FROM reports r JOIN report_rows w ON w.report = r.id"
        f" WHERE r.kind = 'dmarc'{cond} ORDER BY r.begin, r.id, w.id"
    )
    policies: dict[int, dict[str, Any]] = {}

    def policy_of(rid: int, text: str) -> dict[str, Any]:
        if rid not in policies:
            policies[rid] = json.loads(text or "{}")
        return policies[rid]

    return [
        StoredRow(
            int(rid),
            org,
            report_id,
            dom,
            int(b),
            int(e),
            policy_of(rid, policy),
            ip,
            int(n),
            disp,
            dkim,
            spf,
            hf,
        )
        for rid, org, report_id, dom, b, e, policy, ip, n, disp, dkim, spf, hf in db.execute(
            sql, args
        ).fetchall()
    ]


def dmarc_reports(
    db: sqlite_utils.Database,
    since: int | None = None,
    until: int | None = None,
    domain: str | None = None,
) -> list[dict[str, Any]]:
    """The DMARC reports in the window, rows or not: who reported what, when."""
    cond, args = _window(since, until, domain)
    sql = (
        "SELECT r.id, r.org_name, r.report_id, r.domain, r.begin, r.end, r.policy FROM reports r"
        f" WHERE r.kind = 'dmarc'{cond} ORDER BY r.begin, r.id"
    )
    return [
        {
            "id": rid,
            "org_name": org,
            "report_id": report_id,
            "domain": dom,
            "begin": b,
            "end": e,
            "policy": json.loads(p or "{}"),
        }
        for rid, org, report_id, dom, b, e, p in db.execute(sql, args).fetchall()
    ]


def tls_policies(
    db: sqlite_utils.Database,
    since: int | None = None,
    until: int | None = None,
    domain: str | None = None,
) -> list[dict[str, Any]]:
    cond, args = _window(since, until, None)
    if domain:
        cond += " AND t.policy_domain = ?"
        args.append(domain.lower().rstrip("."))
    sql = (
        "SELECT r.org_name, r.report_id, t.policy_type, t.policy_domain, t.successful, t.failed,"
        " t.failures FROM reports r JOIN report_tls t ON t.report = r.id"
        f" WHERE r.kind = 'tlsrpt'{cond} ORDER BY t.policy_domain, r.begin, t.id"
    )
    return [
        {
            "org_name": org,
            "report_id": report_id,
            "policy_type": ptype,
            "policy_domain": pdom,
            "successful": ok,
            "failed": bad,
            "failures": json.loads(f or "{}"),
        }
        for org, report_id, ptype, pdom, ok, bad, f in db.execute(sql, args).fetchall()
    ]


def refused_count(db: sqlite_utils.Database, since_iso: str | None = None) -> int:
    if since_iso:
        row = db.execute(
            "SELECT COUNT(*) FROM report_refused WHERE received_at >= ?", [since_iso]
        ).fetchone()
    else:
        row = db.execute("SELECT COUNT(*) FROM report_refused").fetchone()
    return int(row[0])


def raw_report(db: sqlite_utils.Database, report: int) -> bytes | None:
    """The stored raw report, gzipped as stored."""
    row = db.execute("SELECT raw FROM reports WHERE id = ?", [report]).fetchone()
    return bytes(row[0]) if row else None


def cached_names(db: sqlite_utils.Database, ips: list[str], fresh_after: float) -> dict[str, str]:
    """Reverse names looked up after `fresh_after` (epoch seconds); "" is a cached no-name."""
    out: dict[str, str] = {}
    for i in range(0, len(ips), 500):
        chunk = ips[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for ip, name in db.execute(
            f"SELECT ip, name FROM report_ptr WHERE looked_up_at >= ? AND ip IN ({marks})",
            [fresh_after, *chunk],
        ).fetchall():
            out[ip] = name
    return out


def cache_names(db: sqlite_utils.Database, names: dict[str, str], when: float) -> None:
    with db.conn:
        db.conn.executemany(
            "INSERT INTO report_ptr (ip, name, looked_up_at) VALUES (?, ?, ?)"
            " ON CONFLICT (ip) DO UPDATE SET name = excluded.name,"
            " looked_up_at = excluded.looked_up_at",
            [(ip, name, when) for ip, name in names.items()],
        )
