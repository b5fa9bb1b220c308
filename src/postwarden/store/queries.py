"""Reads of the decision log, shared by `postwarden log` and the TUI."""

from __future__ import annotations

import json
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
]


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
    sender: str | None = None,
    action: str | None = None,
    queue_id: str | None = None,
    after_id: int = 0,
    limit: int | None = 50,
) -> list[dict[str, Any]]:
    """Matching decisions, oldest first; with `limit`, the newest `limit` of them."""
    where = ["id > ?"]
    args: list[Any] = [after_id]
    if since:
        where.append("time >= ?")
        args.append(since)
    if sender:
        where.append("(identity = ? OR mail_from = ? OR header_from LIKE ?)")
        args += [sender, sender, f"%{sender}%"]
    if action:
        where.append("action = ?")
        args.append(action)
    if queue_id:
        where.append("queue_id = ?")
        args.append(queue_id)
    sql = f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE {' AND '.join(where)} ORDER BY id DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [dict(zip(COLUMNS, r, strict=True)) for r in db.execute(sql, args).fetchall()]
    return [decode(r) for r in reversed(rows)]
