"""The SQL of the releaser's schedule (streams.md).

The hold queue itself is the spool: a `paced` row names a held message's queue id, in the
order it was held. A release is claimed first (state 'releasing', the pace's release and the
warm-up counts written in one transaction), then Postfix is told (`postsuper -H`), then the
row is forgotten. A crash between the two leaves a claimed row, finished on the next round: the
allowance was counted once, and Postfix releases a held message once however often it is told.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from postwarden.policy.model import Charge
from postwarden.store.db import BUSY_TIMEOUT_MS

KEEP_RELEASES_S = 2 * 86400  # the longest pace window is a day
KEEP_WARMUP_DAYS = 400

# (queue_id, seq, held_at, identity, pace, charges, state)
Row = tuple[str, int, float, str, bool, tuple[Charge, ...], str]


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _charges(text: str) -> tuple[Charge, ...]:
    return tuple((str(k), str(g), int(n)) for k, g, n in json.loads(text or "[]"))


# ---- written in the milter's rate transaction (uncommitted until the outcome is final) ----


def enqueue(
    conn: sqlite3.Connection,
    queue_id: str,
    held_at: float,
    identity: str,
    pace: bool,
    charges: Iterable[Charge],
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO paced (queue_id, held_at, identity, pace, charges)"
        " VALUES (?, ?, ?, ?, ?)",
        [queue_id, held_at, identity, int(pace), json.dumps([list(c) for c in charges])],
    )


def add_warmup(conn: sqlite3.Connection, day: str, charges: Iterable[Charge]) -> None:
    for key, group, n in charges:
        conn.execute(
            "INSERT INTO warmup_counts (day, key, grp, rcpts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (day, key, grp) DO UPDATE SET rcpts = rcpts + excluded.rcpts",
            [day, key, group, n],
        )


def warmup_state(conn: sqlite3.Connection, day: str) -> tuple[tuple[str, str, int, int], ...]:
    """(key, group, recipients counted on `day`, recipients of warm-up holds waiting). Bulk
    mail waiting for its pace is not counted as waiting: it must not hold transactional mail
    back from a group that has allowance left."""
    sent = sent_on(conn, day)
    waiting: dict[tuple[str, str], int] = {}
    rows = conn.execute("SELECT charges FROM paced WHERE charges != '[]' AND pace = 0").fetchall()
    for (text,) in rows:
        for key, group, n in _charges(text):
            waiting[(key, group)] = waiting.get((key, group), 0) + n
    keys = set(sent) | set(waiting)
    return tuple((k, g, sent.get((k, g), 0), waiting.get((k, g), 0)) for k, g in sorted(keys))


# ---- the releaser ---------------------------------------------------------------------------


def sent_on(conn: sqlite3.Connection, day: str) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT key, grp, rcpts FROM warmup_counts WHERE day = ?", [day]).fetchall()
    return {(str(k), str(g)): int(n) for k, g, n in rows}


def waiting(conn: sqlite3.Connection) -> list[Row]:
    """Every row of the schedule, oldest first."""
    rows = conn.execute(
        "SELECT queue_id, seq, held_at, identity, pace, charges, state FROM paced ORDER BY seq"
    ).fetchall()
    return [
        (str(q), int(seq), float(t), str(i), bool(p), _charges(c), str(st))
        for q, seq, t, i, p, c, st in rows
    ]


def pace_state(conn: sqlite3.Connection, window: int, now: float) -> tuple[int, float]:
    """(releases in the last `window` seconds, time of the latest release or 0)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM pace_releases WHERE time > ?", [now - window]
    ).fetchone()
    last = conn.execute("SELECT MAX(time) FROM pace_releases").fetchone()
    return int(row[0]), float(last[0] or 0.0)


def claim(
    conn: sqlite3.Connection,
    rows: list[tuple[str, bool, tuple[Charge, ...]]],
    now: float,
    day: str,
) -> None:
    """Claim (queue_id, paced, charges) for release, counting each against the pace and the
    day's warm-up, in the caller's transaction."""
    for queue_id, paced, charges in rows:
        conn.execute(
            "UPDATE paced SET state = 'releasing', claimed_at = ? WHERE queue_id = ?",
            [now, queue_id],
        )
        if paced:
            conn.execute(
                "INSERT INTO pace_releases (time, queue_id) VALUES (?, ?)", [now, queue_id]
            )
        add_warmup(conn, day, charges)


def unclaim(
    conn: sqlite3.Connection,
    rows: list[tuple[str, bool, tuple[Charge, ...]]],
    claimed_at: float,
    day: str,
    drop: bool,
) -> None:
    """Take back claims Postfix did not act on (the message was not in the hold queue): the
    release and the warm-up counts are undone; the row goes back to waiting, or with `drop`
    off the schedule."""
    for queue_id, paced, charges in rows:
        if paced:
            conn.execute(
                "DELETE FROM pace_releases WHERE queue_id = ? AND time = ?", [queue_id, claimed_at]
            )
        for key, group, n in charges:
            conn.execute(
                "UPDATE warmup_counts SET rcpts = MAX(0, rcpts - ?) WHERE day = ? AND key = ?"
                " AND grp = ?",
                [n, day, key, group],
            )
        if drop:
            conn.execute("DELETE FROM paced WHERE queue_id = ?", [queue_id])
        else:
            conn.execute(
                "UPDATE paced SET state = 'held', claimed_at = NULL WHERE queue_id = ?", [queue_id]
            )


def forget(conn: sqlite3.Connection, queue_ids: Iterable[str]) -> int:
    """Drop rows from the schedule: released, or gone (an admin released or deleted them)."""
    n = 0
    for q in queue_ids:
        n += conn.execute("DELETE FROM paced WHERE queue_id = ?", [q]).rowcount
    return n


def prune(conn: sqlite3.Connection, now: float, today: str) -> None:
    conn.execute("DELETE FROM pace_releases WHERE time < ?", [now - KEEP_RELEASES_S])
    conn.execute(
        "DELETE FROM warmup_counts WHERE day < date(?, ?)", [today, f"-{KEEP_WARMUP_DAYS} days"]
    )


def releases_since(conn: sqlite3.Connection, since: float) -> int:
    return int(
        conn.execute("SELECT COUNT(*) FROM pace_releases WHERE time > ?", [since]).fetchone()[0]
    )
