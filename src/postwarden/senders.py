"""Sender identities with their counts against their caps, and their locks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlite_utils

from postwarden import audit
from postwarden.config.models import Policy
from postwarden.store.rates import read_state


@dataclass
class SenderStatus:
    identity: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # {cap, used, limit}
    recipients: list[dict[str, Any]] = field(default_factory=list)
    locked_at: str = ""
    lock_cap: str = ""
    lock_queue_id: str = ""

    @property
    def locked(self) -> bool:
        return bool(self.locked_at)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "locked": self.locked}


def _subject(identity: str) -> tuple[str, str]:
    kind, _, rest = identity.partition(":")
    login = rest if kind == "sasl" else ""
    return login, rest.rpartition("@")[2] if "@" in rest else ""


def statuses(
    db: sqlite_utils.Database, policy: Policy, now: datetime, locked_only: bool = False
) -> list[SenderStatus]:
    windows = policy.rate_windows()
    since = now.timestamp() - max(windows or [86400])
    names = {r[0] for r in db.execute("SELECT identity FROM locks").fetchall()}
    if not locked_only:
        names |= {
            r[0]
            for r in db.execute(
                "SELECT DISTINCT identity FROM rate_events WHERE time > ?", [since]
            ).fetchall()
        }
    out = []
    for name in names:
        state = read_state(db.conn, name, windows, now.timestamp())
        message_caps, recipient_caps = policy.rate_limits(*_subject(name))
        s = SenderStatus(name)
        s.messages = [
            {"cap": spec, "used": state.in_window(w)[0], "limit": n} for n, w, spec in message_caps
        ]
        s.recipients = [
            {"cap": spec, "used": state.in_window(w)[1], "limit": n}
            for n, w, spec in recipient_caps
        ]
        if state.lock:
            s.locked_at, s.lock_cap, s.lock_queue_id = (
                state.lock.locked_at,
                state.lock.cap,
                state.lock.queue_id,
            )
        out.append(s)
    # Locked first, then the busiest.
    out.sort(
        key=lambda s: (
            not s.locked,
            -max([m["used"] / m["limit"] for m in s.messages] or [0]),
            s.identity,
        )
    )
    return out


def unlock(db: sqlite_utils.Database, identity: str, note: str = "") -> bool:
    """Lift the lock and start the sender's windows afresh: its held messages counted too, so
    without a fresh start the admin's unlock would be undone by the sender's next message."""
    with db.conn:
        cur = db.conn.execute("DELETE FROM locks WHERE identity = ?", [identity])
        if cur.rowcount:
            db.conn.execute("DELETE FROM rate_events WHERE identity = ?", [identity])
    if cur.rowcount:
        audit.record(db, "unlock", [identity], note)
    return cur.rowcount > 0
