"""The decision writer cannot die and never blocks mail (decisions.md, What is recorded).

What each bad input gets: a text with any bytes at all is stored readably (undecodable bytes
read as Latin-1), never an exception; an exception in one row's write loses that row alone,
counted and logged; a dead thread is restarted; a queue that stays full makes the caller wait
QUEUE_WAIT_S at most, and the row is dropped and counted.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from postwarden.store import daemon_state, open_db, writer
from postwarden.store.text import readable
from postwarden.store.writer import Writer

COLUMNS = ("queue_id", "identity", "mail_from", "header_from", "subject", "message_id", "error")


def _random_text(rng: random.Random) -> str:
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    # As pymilter hands header values over: decoded with surrogateescape.
    text = raw.decode("utf-8", "surrogateescape")
    if rng.random() < 0.1:
        text += "\ud800"  # a lone surrogate that is not an escaped byte
    return text


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Caf\udce9", "Café"),  # raw Latin-1 over SMTP
        ("résumé 日本", "résumé 日本"),  # valid UTF-8 stays as it is
        ("a\ud800b", "a\ufffdb"),  # a surrogate that no byte gives: U+FFFD
        ("\udcff\udcfe", "ÿþ"),
        ("", ""),
    ],
)
def test_readable(given: str, stored: str) -> None:
    assert readable(given) == stored
    readable(given).encode("utf-8")  # never raises


def test_ten_thousand_rows_with_random_bytes_in_every_text_column_are_all_written(
    tmp_path: Path,
) -> None:
    w = Writer(tmp_path / "d.db", 90)
    w.start()
    rng = random.Random(12)
    sent = []
    for i in range(10_000):
        row = {c: _random_text(rng) for c in COLUMNS}
        row.update(time=f"2026-12-01T00:00:{i:05d}", action="accept", queue_id=f"Q{i}")
        sent.append(row)
        w.insert("decisions", row)
    w.flush_and_stop()
    db = open_db(tmp_path / "d.db")
    got = {r[0]: r for r in db.execute(f"SELECT queue_id, {', '.join(COLUMNS[1:])} FROM decisions")}
    assert len(got) == 10_000 and w.failed == 0 and w.dropped == 0
    for row in sent[:500]:
        assert got[row["queue_id"]][1:] == tuple(readable(row[c]) for c in COLUMNS[1:])


def test_an_exception_in_one_row_loses_that_row_only_and_is_counted(tmp_path: Path) -> None:
    w = Writer(tmp_path / "d.db", 90)
    w.start()
    for i in range(300):
        w.insert("decisions", {"time": "t", "action": "accept", "queue_id": f"Q{i}"})
        if i == 150:

            def bad(db: sqlite_utils.Database) -> None:
                raise UnicodeEncodeError("utf-8", "x", 0, 1, "injected")

            w.submit(bad, "the injected row")
            w.submit(lambda db: db.conn.execute("INSERT INTO nowhere VALUES (1)"), "bad SQL")
    w.flush_and_stop()
    n = open_db(tmp_path / "d.db").execute("SELECT count(*) FROM decisions").fetchone()[0]
    assert n == 300 and w.failed == 2


def test_the_writer_thread_is_restarted_if_it_ends(tmp_path: Path) -> None:
    w = Writer(tmp_path / "d.db", 90)
    w.start()

    def kill(db: sqlite_utils.Database) -> None:
        raise SystemExit("the thread's loop ends")  # not an Exception: escapes the row guard

    w.submit(kill)
    time.sleep(0.8)
    w.insert("decisions", {"time": "t", "action": "accept", "queue_id": "after"})
    w.flush_and_stop()
    rows = open_db(tmp_path / "d.db").execute("SELECT queue_id FROM decisions").fetchall()
    assert rows == [("after",)] and w.restarts >= 1


def test_a_full_queue_waits_a_bounded_time_then_drops_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "QUEUE_SIZE", 5)
    monkeypatch.setattr(writer, "QUEUE_WAIT_S", 0.2)
    w = Writer(tmp_path / "d.db", 90)
    w.start()
    # The daemon's row, where the writer reports what it lost.
    w.submit(daemon_state.status_op(w.pid, "s", "s", "h", 0, True, "started"))
    gate = threading.Event()
    w.submit(lambda db: (gate.wait(10), None)[1])  # the disk "stalls"
    time.sleep(0.1)
    started = time.monotonic()
    results = [
        w.insert("decisions", {"time": "t", "action": "accept", "queue_id": f"Q{i}"})
        for i in range(8)
    ]
    waited = time.monotonic() - started
    gate.set()
    w.flush_and_stop()
    assert w.dropped == 3 and waited < 3  # 5 queued, 3 dropped after 0.2 s each
    db = open_db(tmp_path / "d.db")
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 5
    [health] = daemon_state.writer_health(db)
    assert health.rows_dropped == 3 and health.pid == w.pid
    del results


def test_sqlite_refusal_of_a_row_is_counted_not_fatal(tmp_path: Path) -> None:
    w = Writer(tmp_path / "d.db", 90)
    w.start()
    w.insert("decisions", {"time": None, "action": "accept"})  # NOT NULL: refused
    w.insert("decisions", {"time": "t", "action": "accept", "queue_id": "ok"})
    w.flush_and_stop()
    assert w.failed == 1
    with sqlite3.connect(tmp_path / "d.db") as c:
        assert c.execute("SELECT queue_id FROM decisions").fetchall() == [("ok",)]


def test_a_batch_of_rows_is_a_few_multi_row_inserts_in_order(tmp_path: Path) -> None:
    """What the writer's speed depends on (issue 21), counted, not timed: each statement is a
    sqlite3_step that gives up the GIL with the write lock held, so a batch's rows for one
    table go in multi-row INSERTs of at most MAX_PARAMS values, in order, with any other op
    between them kept in its place."""
    db = open_db(tmp_path / "d.db")
    writer.migrate(db)
    cols = ("time", "action", "queue_id", *COLUMNS[1:])
    seen: list[str] = []
    batch: list[writer.Op] = []
    for i in range(400):
        if i == 200:
            batch.append(
                lambda d: d.conn.execute(
                    "INSERT INTO audit (time, actor, action,"
                    " target, note) VALUES ('t', 'a', 'b', 'c', 'd')"
                )
            )
        row = {c: f"{c}{i}" for c in cols}
        row["queue_id"] = f"Q{i:03d}"
        batch.append(writer._Rows("decisions", cols, [[row[c] for c in cols]]))
    merged = writer._merged(batch)
    per = writer.MAX_PARAMS // len(cols)
    assert per < 200  # the test splits runs as well as joining them
    assert len(merged) == 2 * -(-200 // per) + 1
    db.conn.set_trace_callback(seen.append)
    with db.conn:
        for op in merged:
            op(db)
    inserts = [s for s in seen if s.startswith("INSERT INTO [decisions]")]
    assert len(inserts) == 2 * -(-200 // per)
    got = [r[0] for r in db.execute("SELECT queue_id FROM decisions ORDER BY id")]
    assert got == [f"Q{i:03d}" for i in range(400)]
    audit = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    assert audit == 1
