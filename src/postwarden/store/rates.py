"""Rate counters and locks in SQLite: read and record in one transaction.

BEGIN IMMEDIATE takes SQLite's write lock before the read, so between the read of a sender's
counts and the record of its message no other thread or process can count one: the windows
are exact across libmilter threads, across two postwarden processes on one file, and across
kill -9 (a committed event is on disk).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from postwarden.policy.model import Lock, RateState
from postwarden.store.db import BUSY_TIMEOUT_MS

KEEP_EVENTS_S = 2 * 86400  # the longest window is a day; keep a margin


@dataclass
class RateTransaction:
    conn: sqlite3.Connection
    identity: str
    now: float  # the event time: never before the sender's latest, so totals stay in order
    state: RateState
    totals: tuple[int, int]  # the sender's running totals so far (messages, recipients)

    def count(self, rcpts: int, queue_id: str) -> None:
        self.conn.execute(
            "INSERT INTO rate_events (identity, time, rcpts, queue_id, cum_msgs, cum_rcpts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [self.identity, self.now, rcpts, queue_id, self.totals[0] + 1, self.totals[1] + rcpts],
        )

    def lock(self, cap: str, queue_id: str) -> None:
        when = datetime.fromtimestamp(self.now, UTC).isoformat()
        self.conn.execute(
            "INSERT OR IGNORE INTO locks (identity, locked_at, cap, queue_id) VALUES (?, ?, ?, ?)",
            [self.identity, when, cap, queue_id],
        )
        self.conn.execute(
            "INSERT INTO audit (time, actor, action, target, note) VALUES (?, ?, ?, ?, ?)",
            [when, "postwarden", "lock", self.identity, f"broke {cap} with {queue_id}"],
        )


def _latest(conn: sqlite3.Connection, identity: str) -> tuple[float, int, int] | None:
    row = conn.execute(
        "SELECT time, cum_msgs, cum_rcpts FROM rate_events WHERE identity = ?"
        " ORDER BY time DESC, id DESC LIMIT 1",
        [identity],
    ).fetchone()
    return (float(row[0]), int(row[1]), int(row[2])) if row else None


def read_state(
    conn: sqlite3.Connection,
    identity: str,
    windows: list[int],
    now: float,
    latest: tuple[float, int, int] | None = None,
) -> RateState:
    """The sender's lock and, per window, the messages and recipients counted in it: the
    running totals now, less the totals just before the window's first event. `latest` is
    the sender's latest event when the caller has read it already."""
    row = conn.execute(
        "SELECT locked_at, cap, queue_id FROM locks WHERE identity = ?", [identity]
    ).fetchone()
    lock = Lock(identity, row[0], row[1], row[2]) if row else None
    latest = latest or _latest(conn, identity)
    counts = []
    for w in windows:
        first = conn.execute(
            "SELECT cum_msgs - 1, cum_rcpts - rcpts FROM rate_events WHERE identity = ?"
            " AND time > ? ORDER BY time, id LIMIT 1",
            [identity, now - w],
        ).fetchone()
        if latest is None or first is None:
            counts.append((w, 0, 0))
        else:
            counts.append((w, latest[1] - int(first[0]), latest[2] - int(first[1])))
    return RateState(lock=lock, counts=tuple(counts))


class RateStore:
    """A pool of connections, not one per thread: libmilter runs every SMTP connection on a new
    C thread, and pymilter gives each callback a new Python thread state, so a thread-local
    connection would be a new SQLite connection per message (an open, and memory that grew
    with every message in the benchmark)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One rate transaction at a time in this process: threads wait on this lock, handed
        # over at once, instead of sleeping in SQLite's busy handler (1, 2, 5, 10 ... 100 ms
        # between retries) while another thread holds the write lock. SQLite's own lock still
        # keeps other processes exact.
        self._tx_lock = threading.Lock()

    @property
    def write_lock(self) -> threading.Lock:
        """The lock around every write transaction of this process on the database: the
        decision writer takes it for its batches too, so the two hand over without sleeping."""
        return self._tx_lock

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the transaction is ours to begin (IMMEDIATE) and end.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL with NORMAL: a commit survives kill -9 without an fsync per message (only a
        # power loss can take back the last few).
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        conn = conn or self._open()
        try:
            yield conn
        finally:
            with self._lock:
                self._idle.append(conn)

    @contextmanager
    def transaction(
        self, identity: str, windows: list[int], now: datetime
    ) -> Iterator[RateTransaction]:
        with self._tx_lock, self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                latest = _latest(conn, identity)
                # Messages commit in the order they take the lock, which need not be the order
                # of their clocks: an event never goes before the sender's latest.
                at = max(now.timestamp(), latest[0]) if latest else now.timestamp()
                state = read_state(conn, identity, windows, at, latest)
                totals = (latest[1], latest[2]) if latest else (0, 0)
                yield RateTransaction(conn, identity, at, state, totals)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def state(self, identity: str, windows: list[int], now: datetime) -> RateState:
        with self._connection() as conn:
            return read_state(conn, identity, windows, now.timestamp())


def identities(db_conn: sqlite3.Connection, since: float, locked_only: bool) -> set[str]:
    """The locked identities and, unless locked_only, those counted since `since`."""
    names = {r[0] for r in db_conn.execute("SELECT identity FROM locks").fetchall()}
    if not locked_only:
        names |= {
            r[0]
            for r in db_conn.execute(
                "SELECT DISTINCT identity FROM rate_events WHERE time > ?", [since]
            ).fetchall()
        }
    return names


def unlock(db_conn: sqlite3.Connection, identity: str) -> bool:
    """Lift the lock and start the sender's windows afresh: its held messages counted too, so
    without a fresh start the admin's unlock would be undone by the sender's next message."""
    with db_conn:
        cur = db_conn.execute("DELETE FROM locks WHERE identity = ?", [identity])
        if cur.rowcount:
            db_conn.execute("DELETE FROM rate_events WHERE identity = ?", [identity])
    return cur.rowcount > 0
