"""Reads of the decision log, shared by `postwarden log` and the TUI."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

COLUMNS = [
    "id",
    "time",
    "hostname",
    "queue_id",
    "client_addr",
    "client_name",
    "helo",
    "identity",
    "mail_from",
    "rcpts",
    "header_from",
    "subject",
    "message_id",
    "size",
    "outbound",
    "action",
    "reasons",
    "signatures",
    "policy_hash",
    "duration_ms",
    "error",
    "headers",
    "stream",  # streams.md (migration 011_streams)
]


_AGO = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def point_in_time(text: str, now: datetime) -> str:
    """ "15m", "2h", "7d" ago, or an ISO time (UTC when no zone is given), as the ISO UTC text
    the decisions table sorts by: `log --since` and the TUI's since:/until: filters."""
    m = _AGO.match(text.strip())
    if m:
        return (now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})).isoformat()
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f'"{text}" is not a time: write 15m, 2h, 7d or 2026-11-23T10:00') from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


def decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("rcpts", "reasons", "signatures"):
        out[key] = json.loads(out[key]) if out.get(key) else []
    out["outbound"] = bool(out.get("outbound"))
    return out


def decisions(
    db: sqlite_utils.Database,
    *,
    since: str | None = None,
    until: str | None = None,
    sender: str | None = None,
    domain: str | None = None,
    action: str | None = None,
    reason: str | None = None,
    text: str | None = None,
    queue_id: str | None = None,
    after_id: int = 0,
    before_id: int | None = None,
    limit: int | None = 50,
) -> list[dict[str, Any]]:
    """Matching decisions, oldest first; with `limit`, the newest `limit` of them (older than
    `before_id` when given, which is how the TUI pages back through a million rows)."""
    where = ["id > ?"]
    args: list[Any] = [after_id]
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    if since:
        where.append("time >= ?")
        args.append(since)
    if until:
        where.append("time < ?")
        args.append(until)
    if sender:
        where.append("(identity = ? OR mail_from = ? OR header_from LIKE ?)")
        args += [sender, sender, f"%{sender}%"]
    if domain:
        domain = domain.lower().lstrip("@")
        where.append("(header_from LIKE ? OR mail_from LIKE ? OR identity LIKE ?)")
        args += [f"%@{domain}%", f"%@{domain}", f"%@{domain}"]
    if action:
        where.append("action = ?")
        args.append(action)
    if reason:
        # Matched on the parsed JSON, not on the spacing json.dumps happens to write.
        check, _, code = reason.partition(".")
        where.append(
            "EXISTS (SELECT 1 FROM json_each(decisions.reasons) r"
            " WHERE json_extract(r.value, '$.check') = ?"
            + (" AND json_extract(r.value, '$.code') = ?" if code else "")
            + ")"
        )
        args += [check, code] if code else [check]
    if text:
        where.append(
            "(subject LIKE ? OR header_from LIKE ? OR mail_from LIKE ? OR identity LIKE ?"
            " OR queue_id LIKE ? OR rcpts LIKE ? OR message_id LIKE ?)"
        )
        args += [f"%{text}%"] * 7
    if queue_id:
        where.append("queue_id = ?")
        args.append(queue_id)
    sql = f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE {' AND '.join(where)} ORDER BY id DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in db.execute(sql, args).fetchall()]
    return [decode(r) for r in reversed(rows)]


def signed_for_domain(db: sqlite_utils.Database, domain: str, since: str, until: str) -> int:
    """Outbound messages postwarden passed on (accepted) with a signature of `domain` or one
    of its subdomains, between two ISO UTC times: what `postwarden reports` sets beside the
    count the DMARC reports give for this server's mail."""
    domain = domain.lower().rstrip(".")
    row = db.execute(
        "SELECT COUNT(*) FROM decisions WHERE time >= ? AND time < ? AND outbound = 1"
        " AND action = 'accept' AND (signatures LIKE ? OR signatures LIKE ?)",
        [since, until, f'%"d": "{domain}"%', f'%"d": "%.{domain}"%'],
    ).fetchone()
    return int(row[0])
