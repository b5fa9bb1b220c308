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
    now: datetime
    state: RateState

    def count(self, rcpts: int, queue_id: str) -> None:
        self.conn.execute(
            "INSERT INTO rate_events (identity, time, rcpts, queue_id) VALUES (?, ?, ?, ?)",
            [self.identity, self.now.timestamp(), rcpts, queue_id],
        )

    def lock(self, cap: str, queue_id: str) -> None:
        when = self.now.astimezone(UTC).isoformat()
        self.conn.execute(
            "INSERT OR IGNORE INTO locks (identity, locked_at, cap, queue_id) VALUES (?, ?, ?, ?)",
            [self.identity, when, cap, queue_id],
        )
        self.conn.execute(
            "INSERT INTO audit (time, actor, action, target, note) VALUES (?, ?, ?, ?, ?)",
            [when, "postwarden", "lock", self.identity, f"broke {cap} with {queue_id}"],
        )


def read_state(
    conn: sqlite3.Connection, identity: str, windows: list[int], now: float
) -> RateState:
    row = conn.execute(
        "SELECT locked_at, cap, queue_id FROM locks WHERE identity = ?", [identity]
    ).fetchone()
    lock = Lock(identity, row[0], row[1], row[2]) if row else None
    if not windows:
        return RateState(lock=lock)
    # One pass over the sender's events in the longest window, a sum per window.
    sums = ", ".join(
        f"COALESCE(SUM(time > {now - w!r}), 0), COALESCE(SUM(CASE WHEN time > {now - w!r}"
        " THEN rcpts ELSE 0 END), 0)"
        for w in windows
    )
    values = conn.execute(
        f"SELECT {sums} FROM rate_events WHERE identity = ? AND time > ?",
        [identity, now - max(windows)],
    ).fetchone()
    counts = tuple((w, int(values[2 * i]), int(values[2 * i + 1])) for i, w in enumerate(windows))
    return RateState(lock=lock, counts=counts)


class RateStore:
    """A pool of connections, not one per thread: libmilter runs every SMTP connection on a new
    C thread, and pymilter gives each callback a new Python thread state, so a thread-local
    connection would be a new SQLite connection per message (an open, and memory that grew
    with every message in the benchmark)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

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
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                state = read_state(conn, identity, windows, now.timestamp())
                yield RateTransaction(conn, identity, now, state)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def state(self, identity: str, windows: list[int], now: datetime) -> RateState:
        with self._connection() as conn:
            return read_state(conn, identity, windows, now.timestamp())
