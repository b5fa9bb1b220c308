"""Rate counters and locks in SQLite: read and record in one transaction.

BEGIN IMMEDIATE takes SQLite's write lock before the read, so between the read of a sender's
counts and the record of its message no other thread or process can count one: the windows
are exact across libmilter threads, across two postwarden processes on one file, and across
kill -9 (a committed event is on disk).
"""

from __future__ import annotations

import contextlib
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


def _snapshot(
    conn: sqlite3.Connection, identity: str, windows: list[int], now: float, clamp: bool
) -> tuple[tuple[float, int, int] | None, float, RateState]:
    """The sender's latest event, the time its windows end at, and its RateState, read in ONE
    statement (one sqlite3_step): pymilter threads give up the GIL at every step, and inside
    the rate transaction each step was a wait for the GIL with the transaction held. `clamp`:
    the windows end at the later of `now` and the latest event (a transaction's event time)."""
    ctes = [
        "latest AS (SELECT time, cum_msgs, cum_rcpts FROM rate_events WHERE identity = :id"
        " ORDER BY time DESC, id DESC LIMIT 1)",
        "lk AS (SELECT locked_at, cap, queue_id FROM locks WHERE identity = :id)",
        "at AS (SELECT "
        + ("MAX(:now, COALESCE((SELECT time FROM latest), :now))" if clamp else ":now")
        + " AS t)",
    ]
    cols = [
        "(SELECT time FROM latest)",
        "(SELECT cum_msgs FROM latest)",
        "(SELECT cum_rcpts FROM latest)",
        "(SELECT t FROM at)",
        "(SELECT locked_at FROM lk)",
        "(SELECT cap FROM lk)",
        "(SELECT queue_id FROM lk)",
    ]
    args: dict[str, object] = {"id": identity, "now": now}
    for i, w in enumerate(windows):
        # The window's first event: the totals just before it are its cum_* less itself.
        ctes.append(
            f"w{i} AS (SELECT cum_msgs - 1 AS m, cum_rcpts - rcpts AS r FROM rate_events"
            f" WHERE identity = :id AND time > (SELECT t FROM at) - :w{i}"
            " ORDER BY time, id LIMIT 1)"
        )
        cols += [f"(SELECT m FROM w{i})", f"(SELECT r FROM w{i})"]
        args[f"w{i}"] = w
    row = conn.execute("WITH " + ", ".join(ctes) + " SELECT " + ", ".join(cols), args).fetchone()
    latest = (float(row[0]), int(row[1]), int(row[2])) if row[0] is not None else None
    lock = Lock(identity, row[4], row[5], row[6]) if row[4] is not None else None
    counts = []
    for i, w in enumerate(windows):
        first_m, first_r = row[7 + 2 * i], row[8 + 2 * i]
        if latest is None or first_m is None:
            counts.append((w, 0, 0))
        else:
            counts.append((w, latest[1] - int(first_m), latest[2] - int(first_r)))
    return latest, float(row[3]), RateState(lock=lock, counts=tuple(counts))


def read_state(
    conn: sqlite3.Connection, identity: str, windows: list[int], now: float
) -> RateState:
    """The sender's lock and, per window, the messages and recipients counted in it: the
    running totals now, less the totals just before the window's first event."""
    return _snapshot(conn, identity, windows, now, clamp=False)[2]


MAX_GROUP = 8  # messages one SQLite transaction carries at most (group commit)


class RateCommitFailed(Exception):
    """The transaction a message shared with others could not be committed, or another
    message's failure after its writes rolled it back: nothing of it is counted."""


class _Group:
    """One SQLite transaction that messages taking the rate lock one after another share: one
    BEGIN IMMEDIATE and one COMMIT for several messages (group commit). Each still reads and
    writes alone, under the lock, on the one connection: it sees the messages before it."""

    __slots__ = ("conn", "done", "error", "members")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.members = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class _WriteTurn:
    """RateStore.write_lock: the rate lock for another writer of this process (the decision
    writer), with any open group committed first, since SQLite has one write lock."""

    def __init__(self, store: RateStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._tx_lock.acquire()
        try:
            if self.store._group is not None:
                self.store._end(self.store._group, None)
        except BaseException:
            self.store._tx_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self.store._tx_lock.release()

    def locked(self) -> bool:
        """Whether a rate transaction (or a writer's batch) of this process runs now."""
        return self.store._tx_lock.locked()


class RateStore:
    """A pool of connections, not one per thread: libmilter runs every SMTP connection on a new
    C thread, and pymilter gives each callback a new Python thread state, so a thread-local
    connection would be a new SQLite connection per message (an open, and memory that grew
    with every message in the benchmark).

    Group commit: a message that takes the rate lock while an earlier one's transaction is
    still open joins it, and the last of them (none waiting behind it, or MAX_GROUP reached)
    commits for all; each waits for that commit, outside the lock, before its reply. Each
    statement gives up the GIL and, under load, waits to get it back with the lock held:
    BEGIN and COMMIT once for several messages leave two statements each inside the lock
    instead of four. A message that fails before writing anything leaves the group alone; one
    that fails after its writes rolls the group back, and the others in it fail too (a
    tempfail: nothing counted, Postfix tries again)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One rate transaction at a time in this process: threads wait on this lock, handed
        # over at once, instead of sleeping in SQLite's busy handler (1, 2, 5, 10 ... 100 ms
        # between retries) while another thread holds the write lock. SQLite's own lock still
        # keeps other processes exact.
        self._tx_lock = threading.Lock()
        self._group: _Group | None = None
        self._queued = 0  # messages waiting for the rate lock (under self._lock)
        self.commits = 0  # group commits made (the tests count them)

    @property
    def write_lock(self) -> _WriteTurn:
        """The lock around every write transaction of this process on the database: the
        decision writer takes it for its batches too, so the two hand over without sleeping."""
        return _WriteTurn(self)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the transaction is ours to begin (IMMEDIATE) and end.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL with NORMAL: a commit survives kill -9 without an fsync per message (only a
        # power loss can take back the last few).
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        return conn or self._open()

    def _give(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    def _end(self, group: _Group, failure: BaseException | None) -> None:
        """Commit the group (roll it back after `failure`) and wake its messages; under
        _tx_lock."""
        self._group = None
        conn = group.conn
        try:
            if failure is None and not conn.in_transaction:
                # SQLite rolled it back by itself (disk full, I/O error, out of memory): what
                # its members wrote is gone, or was written outside any transaction.
                failure = sqlite3.OperationalError("the group's transaction ended by itself")
            if failure is None:
                conn.execute("COMMIT")
                self.commits += 1
            else:
                group.error = failure
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            group.error = group.error or exc
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        finally:
            if conn.in_transaction:
                # Neither COMMIT nor ROLLBACK went through: never back to the pool with
                # SQLite's write lock held.
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            else:
                self._give(conn)
            group.done.set()

    @contextmanager
    def transaction(
        self, identity: str, windows: list[int], now: datetime
    ) -> Iterator[RateTransaction]:
        with self._lock:
            self._queued += 1
        self._tx_lock.acquire()
        try:
            with self._lock:
                self._queued -= 1
            group = self._group
            if group is not None and not group.conn.in_transaction:
                self._end(group, None)  # ended by SQLite itself: its members fail (_end)
                group = None
            if group is None:
                conn = self._take()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except BaseException:
                    self._give(conn)
                    raise
                group = self._group = _Group(conn)
            group.members += 1
            before = group.conn.total_changes
            try:
                # Messages commit in the order they take the lock, which need not be the order
                # of their clocks: an event never goes before the sender's latest (clamp).
                latest, at, state = _snapshot(group.conn, identity, windows, now.timestamp(), True)
                totals = (latest[1], latest[2]) if latest else (0, 0)
                yield RateTransaction(group.conn, identity, at, state, totals)
            except BaseException as exc:
                if group.conn.total_changes != before or not group.conn.in_transaction:
                    # Its writes cannot be taken back alone (or SQLite took the group's back).
                    self._end(group, exc)
                else:
                    self._end_if_last(group)
                raise
            self._end_if_last(group)
        finally:
            self._tx_lock.release()
        # Outside the lock: the messages after it run meanwhile, and the last commits.
        group.done.wait()
        if group.error is not None:
            raise RateCommitFailed(f"{type(group.error).__name__}: {group.error}") from (
                group.error
            )

    def _end_if_last(self, group: _Group) -> None:
        with self._lock:
            last = self._queued == 0
        if last or group.members >= MAX_GROUP:
            self._end(group, None)

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
