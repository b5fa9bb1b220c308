"""One writer thread fed by a bounded queue, so libmilter threads never wait on disk.

Writes from 20 libmilter threads each taking the SQLite lock would contend on the GIL and the
lock; here they hand a row to a queue and go on. The thread commits in batches.

Nothing stops it: every text is made storable before it is queued (store/text.py); a batch that
fails is written again row by row, so an exception in one row loses that row only, counted and
logged; the thread is restarted if it ever ends. A full queue makes the caller wait at most
QUEUE_WAIT_S, then the row is dropped, counted and logged: mail never hangs on the log. The
counts of rows dropped and failed are written to the daemon's row, where `postwarden log` and
the TUI read them.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from postwarden.store.db import open_db
from postwarden.store.migrations import migrate
from postwarden.store.rates import KEEP_EVENTS_S
from postwarden.store.text import readable_value

log = logging.getLogger("postwarden.store")

Op = Callable[[sqlite_utils.Database], None]
QUEUE_SIZE = 10_000
QUEUE_WAIT_S = 2.0
BATCH = 200  # rows per commit: short turns on the write lock the rate store shares
PRUNE_EVERY_S = 3600.0
PRUNE_CHUNK = 5000
RESTART_PAUSE_S = 0.5
BATCH_RETRY_S = (0.2, 1.0, 3.0)  # pauses before a batch the database refused whole is retried
_STOP = object()


# Rows in one multi-row INSERT: under SQLite's oldest bound parameter limit (999).
MAX_PARAMS = 999


class _Rows:
    """Rows for one table, written as one multi-row INSERT: an Op. Writer.insert queues one
    row; _merged joins a run of them."""

    __slots__ = ("cols", "rows", "table")

    def __init__(self, table: str, cols: tuple[str, ...], rows: list[list[Any]]) -> None:
        self.table, self.cols, self.rows = table, cols, rows

    def __call__(self, db: sqlite_utils.Database) -> None:
        one = "(" + ", ".join("?" * len(self.cols)) + ")"
        sql = f"INSERT INTO [{self.table}] ({', '.join(self.cols)}) VALUES " + ", ".join(
            [one] * len(self.rows)
        )
        db.conn.execute(sql, [v for r in self.rows for v in r])


def _merged(batch: list[Op]) -> list[Op]:
    """The batch with each run of rows for the same table and columns made one multi-row
    INSERT (in order, at most MAX_PARAMS values each): every statement is a sqlite3_step, and
    each step gives up the GIL, which under load is a wait for it while the write lock (the
    rate store's too) is held. One row that cannot be written fails its statement, and the
    batch is then written one op at a time, as before (_write)."""
    out: list[Op] = []
    for key, group in itertools.groupby(
        batch, lambda op: (op.table, op.cols) if isinstance(op, _Rows) else id(op)
    ):
        ops = list(group)
        if not isinstance(key, tuple):
            out += ops  # any other op, in its place
            continue
        table, cols = key
        rows = [r for op in ops if isinstance(op, _Rows) for r in op.rows]
        per = max(1, MAX_PARAMS // max(1, len(cols)))
        out += [_Rows(table, cols, rows[i : i + per]) for i in range(0, len(rows), per)]
    return out


def prune(db: sqlite_utils.Database, retention_days: int, now: datetime) -> int:
    """Delete decisions older than the retention, in chunks so no one transaction is long."""
    cutoff = (now - timedelta(days=retention_days)).isoformat()
    total = 0
    while True:
        with db.conn:
            cur = db.execute(
                "DELETE FROM decisions WHERE id IN "
                "(SELECT id FROM decisions WHERE time < ? ORDER BY time LIMIT ?)",
                [cutoff, PRUNE_CHUNK],
            )
        total += cur.rowcount
        if cur.rowcount < PRUNE_CHUNK:
            break
    # Counted messages older than the longest window (a day) no longer count.
    with db.conn:
        db.execute("DELETE FROM rate_events WHERE time < ?", [now.timestamp() - KEEP_EVENTS_S])
    return total


class Writer:
    def __init__(
        self,
        path: str | Path,
        retention_days: int,
        write_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.path = Path(path)
        # Shared with the rate store (RateStore.write_lock): a batch and a rate transaction
        # take turns on a Python lock instead of one sleeping in SQLite's busy handler.
        self._write_lock: AbstractContextManager[object] = write_lock or threading.Lock()
        self.retention_days = retention_days
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self._next_prune = 0.0
        self.written = 0
        self.failed = 0  # rows an exception kept out of the database
        self.dropped = 0  # rows never queued: the queue stayed full
        self.restarts = 0
        self._reported = (0, 0)
        self.pid = os.getpid()

    def start(self) -> None:
        db = open_db(self.path)
        migrate(db)
        db.conn.close()
        self._ensure_running()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._thread is not None:
                self.restarts += 1
                log.error("store: the writer thread had ended; restarting it")
            self._thread = threading.Thread(
                target=self._supervise, name="postwarden-writer", daemon=True
            )
            self._thread.start()

    def insert(self, table: str, row: dict[str, Any], what: str = "") -> None:
        # Plain SQL rather than Table.insert: sqlite-utils commits inside insert, which would
        # turn a batch into one transaction per row.
        cols = tuple(row)
        values = [readable_value(row[c]) for c in cols]
        self.submit(
            _Rows(table, cols, [values]), what or f"{table} row {row.get('queue_id') or ''}".strip()
        )

    def submit(self, op: Op, what: str = "a record") -> bool:
        """Queue a write; False (counted, logged) when the queue stayed full QUEUE_WAIT_S."""
        if not self._stopping:
            self._ensure_running()
        try:
            self._queue.put(op, timeout=QUEUE_WAIT_S)
        except queue.Full:
            self.dropped += 1
            log.error(
                "store: queue full for %.0f s: %s dropped (%d dropped so far)",
                QUEUE_WAIT_S,
                what,
                self.dropped,
            )
            return False
        return True

    def flush_and_stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._ensure_running()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("store: the writer is still %d rows behind at stop", self._queue.qsize())
            return
        if self._thread is not None:
            self._thread.join(timeout)

    def _supervise(self) -> None:
        while True:
            try:
                self._run()
                return
            except BaseException as exc:
                self.restarts += 1
                log.exception("store: writer loop failed (%s); restarting it", exc)
                time.sleep(RESTART_PAUSE_S)

    def _run(self) -> None:
        db = open_db(self.path)
        try:
            stopping = False
            while not stopping:
                batch = [self._queue.get()]
                while len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if _STOP in batch:
                    stopping = True
                    batch = [op for op in batch if op is not _STOP]
                self._write(db, batch)
                self._report(db)
                self._maybe_prune(db)
        finally:
            db.conn.close()

    def _write(self, db: sqlite_utils.Database, batch: list[Op]) -> None:
        for pause in (*BATCH_RETRY_S, None):
            try:
                with self._write_lock, db.conn:
                    for op in _merged(batch):
                        op(db)
                self.written += len(batch)
                return
            except sqlite3.OperationalError as exc:
                # The database as a whole (locked past the busy timeout, disk full): the batch
                # again after a pause, not 200 rows one by one each waiting out the timeout.
                if pause is None:
                    log.error("store: batch of %d failed (%s); writing one by one", len(batch), exc)
                    break
                log.error("store: batch of %d failed (%s); again in %.1f s", len(batch), exc, pause)
                time.sleep(pause)
            except Exception as exc:  # noqa: BLE001  (one bad row must not cost the batch)
                log.error("store: batch of %d failed (%s); writing one by one", len(batch), exc)
                break
        for op in batch:
            try:
                with self._write_lock, db.conn:
                    op(db)
                self.written += 1
            except Exception as exc:  # noqa: BLE001  (that row alone is lost, and counted)
                self.failed += 1
                log.error("store: a record could not be written (%d so far): %r", self.failed, exc)

    def _report(self, db: sqlite_utils.Database) -> None:
        now = (self.dropped, self.failed)
        if now == self._reported:
            return
        try:
            with db.conn:
                db.execute(
                    "UPDATE daemon SET rows_dropped = ?, rows_failed = ? WHERE pid = ?",
                    [now[0], now[1], self.pid],
                )
            self._reported = now
        except Exception as exc:  # noqa: BLE001
            log.error("store: could not record the dropped-row count: %r", exc)

    def _maybe_prune(self, db: sqlite_utils.Database) -> None:
        mono = time.monotonic()
        if mono < self._next_prune:
            return
        self._next_prune = mono + PRUNE_EVERY_S
        try:
            n = prune(db, self.retention_days, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001
            log.error("store: pruning failed: %s", exc)
            return
        if n:
            log.info("store: pruned %d decisions older than %d days", n, self.retention_days)
