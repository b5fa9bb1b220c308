"""What the releaser's schedule looks like to an admin (streams.md): when each paced or warm-up
hold is due to leave, and each stream's and warm-up's progress. Read by `quarantine list`,
`senders` and the TUI; computed by the same arithmetic the releaser uses (policy/streams.py)."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from postwarden.config.models import Policy
from postwarden.milter.clock import schedule_today
from postwarden.policy.streams import (
    PaceState,
    Waiting,
    due_times,
    pace_of,
    warmup_allowance,
    warmup_day,
)
from postwarden.store import pacing


@dataclass(frozen=True)
class Due:
    queue_id: str
    identity: str
    kind: str  # "pace", "warmup" or "pace+warmup"
    due: str  # ISO time (UTC) it is due to leave
    state: str  # "held" or "releasing"


def _waiting(conn: sqlite3.Connection) -> list[Waiting]:
    return [Waiting(*r) for r in pacing.waiting(conn)]


def _pace(conn: sqlite3.Connection, policy: Policy, now: float) -> PaceState:
    rate = pace_of(policy)
    return PaceState(*pacing.pace_state(conn, rate[1] if rate else 1, now))


def due(conn: sqlite3.Connection, policy: Policy, now: datetime) -> dict[str, Due]:
    """queue id -> when it is due, for every message on the schedule."""
    rows = _waiting(conn)
    if not rows:
        return {}
    ts = now.timestamp()
    today = schedule_today(now)
    sent = pacing.sent_on(conn, today.isoformat())
    times = due_times(rows, policy, _pace(conn, policy, ts), sent, today, ts)
    out = {}
    for w in rows:
        kind = "+".join(k for k, on in (("pace", w.pace), ("warmup", bool(w.charges))) if on)
        at = times.get(w.queue_id, now)
        out[w.queue_id] = Due(w.queue_id, w.identity, kind or "pace", at.isoformat(), w.state)
    return out


@dataclass
class GroupProgress:
    group: str
    used: int
    allowance: int | None  # None: no limit today
    waiting: int  # recipients of held mail waiting


@dataclass
class WarmupProgress:
    key: str
    start: str
    day: int
    days: int  # days in the schedule
    groups: list[GroupProgress] = field(default_factory=list)


@dataclass
class StreamProgress:
    pace: str  # "" without pacing
    released_in_window: int
    limit: int
    window: int
    waiting: int
    next_due: str  # ISO time of the next paced release, "" when none waits
    warmups: list[WarmupProgress] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def progress(conn: sqlite3.Connection, policy: Policy, now: datetime) -> StreamProgress:
    ts = now.timestamp()
    rows = _waiting(conn)
    rate = pace_of(policy)
    pace = _pace(conn, policy, ts)
    times = due(conn, policy, now)
    paced = [w for w in rows if w.pace]
    next_due = min((times[w.queue_id].due for w in paced), default="")
    today = schedule_today(now)
    state = {(k, g): (s, wt) for k, g, s, wt in pacing.warmup_state(conn, today.isoformat())}
    warmups = []
    for key, entry in sorted(policy.warmup.items()):
        groups = []
        for g in entry.providers:
            used, waiting = state.get((key, g), (0, 0))
            groups.append(GroupProgress(g, used, warmup_allowance(entry, today), waiting))
        warmups.append(
            WarmupProgress(
                key, entry.start.isoformat(), warmup_day(entry, today), len(entry.daily), groups
            )
        )
    return StreamProgress(
        pace=policy.streams.bulk.pace,
        released_in_window=pace.in_window,
        limit=rate[0] if rate else 0,
        window=rate[1] if rate else 0,
        waiting=len(paced),
        next_due=next_due,
        warmups=warmups,
    )


def annotate(conn: sqlite3.Connection, policy: Policy, now: datetime, items: list[Any]) -> None:
    """Fill in `paced` and `due` of held messages (quarantine.Held) on the schedule."""
    dues = due(conn, policy, now)
    for m in items:
        d = dues.get(m.queue_id)
        if d is not None:
            m.paced, m.due = d.kind, d.due


def by_identity(dues: dict[str, Due]) -> dict[str, tuple[int, str]]:
    """identity -> (messages on the schedule, the earliest due time)."""
    out: dict[str, tuple[int, str]] = {}
    for d in dues.values():
        n, first = out.get(d.identity, (0, ""))
        out[d.identity] = (n + 1, min(first, d.due) if first else d.due)
    return out


def connect(database: str) -> sqlite3.Connection:
    return pacing.connect(database)


def now_utc() -> datetime:
    return datetime.now(UTC)
