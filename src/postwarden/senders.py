"""Sender identities with their counts against their caps, and their locks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlite_utils

from postwarden import audit
from postwarden.config.models import Policy
from postwarden.policy.route import caps_for
from postwarden.store import rates
from postwarden.store.shared import RedisRateStore


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


def statuses(
    db: sqlite_utils.Database,
    policy: Policy,
    now: datetime,
    locked_only: bool = False,
    shared: RedisRateStore | None = None,
) -> list[SenderStatus]:
    """Each identity's counts against the caps the milter enforces for it (policy/route.py),
    from Redis when `shared` is given ([store].shared), else from the database."""
    windows = policy.rate_windows()
    since = now.timestamp() - max(windows or [86400])
    out = []
    names = (
        shared.identities(since, locked_only)
        if shared is not None
        else rates.identities(db.conn, since, locked_only)
    )
    for name in names:
        caps = caps_for(name, policy)
        windows = sorted({w for _, w, _ in (*caps.messages, *caps.recipients)})
        state = (
            shared.read(name, windows, now.timestamp())
            if shared is not None
            else rates.read_state(db.conn, name, windows, now.timestamp())
        )
        s = SenderStatus(name)
        s.messages = [
            {"cap": spec, "used": state.in_window(w)[0], "limit": n} for n, w, spec in caps.messages
        ]
        s.recipients = [
            {"cap": spec, "used": state.in_window(w)[1], "limit": n}
            for n, w, spec in caps.recipients
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


def unlock(
    db: sqlite_utils.Database, identity: str, note: str = "", shared: RedisRateStore | None = None
) -> bool:
    """Lift the lock (and start the sender's windows afresh), audited in the database. With
    `shared`, the lock in Redis: lifted for every server."""
    done = shared.unlock(identity) if shared is not None else rates.unlock(db.conn, identity)
    if done:
        audit.record(db, "unlock", [identity], note)
    return done
