"""One writer thread fed by a bounded queue, so libmilter threads never wait on disk.

Writes from 20 libmilter threads each taking the SQLite lock would contend on the GIL and the
lock; here they hand a row to a queue and go on. The thread commits in batches.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from postwarden.store.db import open_db
from postwarden.store.migrations import migrate
from postwarden.store.rates import KEEP_EVENTS_S

log = logging.getLogger("postwarden.store")

Op = Callable[[sqlite_utils.Database], None]
QUEUE_SIZE = 10_000
BATCH = 500
PRUNE_EVERY_S = 3600.0
PRUNE_CHUNK = 5000
_STOP = object()


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
    def __init__(self, path: str | Path, retention_days: int) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="postwarden-writer", daemon=True)
        self._next_prune = 0.0
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        db = open_db(self.path)
        migrate(db)
        db.conn.close()
        self._thread.start()

    def insert(self, table: str, row: dict[str, Any]) -> None:
        # Plain SQL rather than Table.insert: sqlite-utils commits inside insert, which would
        # turn a batch into one transaction per row.
        cols = list(row)
        sql = f"INSERT INTO [{table}] ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        values = [row[c] for c in cols]

        def op(db: sqlite_utils.Database) -> None:
            db.conn.execute(sql, values)

        self.submit(op)

    def submit(self, op: Op) -> None:
        # A full queue means the disk is far behind: wait for it rather than lose the record.
        self._queue.put(op)

    def flush_and_stop(self, timeout: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        db = open_db(self.path)
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
            self._maybe_prune(db)
        db.conn.close()

    def _write(self, db: sqlite_utils.Database, batch: list[Op]) -> None:
        try:
            with db.conn:
                for op in batch:
                    op(db)
            self.written += len(batch)
            return
        except sqlite3.Error as exc:
            log.error("store: batch of %d failed (%s); writing one by one", len(batch), exc)
        for op in batch:
            try:
                with db.conn:
                    op(db)
                self.written += 1
            except sqlite3.Error as exc:
                self.failed += 1
                log.error("store: a record could not be written: %s", exc)

    def _maybe_prune(self, db: sqlite_utils.Database) -> None:
        mono = time.monotonic()
        if mono < self._next_prune:
            return
        self._next_prune = mono + PRUNE_EVERY_S
        try:
            n = prune(db, self.retention_days, datetime.now(UTC))
        except sqlite3.Error as exc:
            log.error("store: pruning failed: %s", exc)
            return
        if n:
            log.info("store: pruned %d decisions older than %d days", n, self.retention_days)
