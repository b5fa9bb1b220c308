"""SQLite: migrations, the single writer under many threads, pruning, the queries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from postwarden.store import Writer, migrate, open_db, queries
from postwarden.store.migrations import MIGRATIONS
from postwarden.store.writer import prune


def row(i: int, when: datetime, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "time": when.isoformat(),
        "queue_id": f"Q{i}",
        "identity": f"sasl:user{i % 3}@example.com",
        "mail_from": f"user{i % 3}@example.com",
        "header_from": f"user{i % 3}@example.com",
        "rcpts": json.dumps(["x@remote.test"]),
        "action": "reject" if i % 5 == 0 else "accept",
        "reasons": json.dumps([]),
        "signatures": json.dumps([]),
        "error": "",
    }
    base.update(kw)
    return base


def test_migrate_is_idempotent_and_uses_wal(tmp_path: Path) -> None:
    db = open_db(tmp_path / "p.db")
    assert migrate(db) == [name for name, _ in MIGRATIONS]
    assert migrate(db) == []
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"decisions", "audit", "daemon", "_migrations"} <= set(db.table_names())


def test_two_processes_migrating_at_once_agree(tmp_path: Path) -> None:
    code = (
        "import sys; from postwarden.store import migrate, open_db; migrate(open_db(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "p.db")]) for _ in range(4)
    ]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    names = [r[0] for r in open_db(tmp_path / "p.db").execute("SELECT name FROM _migrations")]
    assert sorted(names) == sorted(n for n, _ in MIGRATIONS)


def test_writer_takes_rows_from_many_threads(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "p.db", retention_days=90)
    writer.start()
    now = datetime.now(UTC)

    def produce(t: int) -> None:
        for i in range(50):
            writer.insert("decisions", row(t * 1000 + i, now))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.flush_and_stop()
    assert writer.failed == 0
    db = open_db(tmp_path / "p.db")
    assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1000


def test_prune_removes_only_rows_past_retention(tmp_path: Path) -> None:
    db = open_db(tmp_path / "p.db")
    migrate(db)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    with db.conn:
        for i in range(12_000):
            age = timedelta(days=100) if i < 11_000 else timedelta(days=1)
            db.table("decisions").insert(row(i, now - age))
    assert prune(db, 90, now) == 11_000
    assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1000


def test_queries_filter_and_order(tmp_path: Path) -> None:
    db = open_db(tmp_path / "p.db")
    migrate(db)
    start = datetime(2026, 11, 23, tzinfo=UTC)
    for i in range(30):
        db.table("decisions").insert(row(i, start + timedelta(minutes=i)))
    got = queries.decisions(db, limit=5)
    assert [r["queue_id"] for r in got] == ["Q25", "Q26", "Q27", "Q28", "Q29"]  # newest last
    assert all(isinstance(r["rcpts"], list) for r in got)
    rejects = queries.decisions(db, action="reject", limit=None)
    assert [r["queue_id"] for r in rejects] == ["Q0", "Q5", "Q10", "Q15", "Q20", "Q25"]
    mine = queries.decisions(db, sender="sasl:user1@example.com", limit=None)
    assert len(mine) == 10
    since = queries.decisions(db, since=(start + timedelta(minutes=28)).isoformat(), limit=None)
    assert [r["queue_id"] for r in since] == ["Q28", "Q29"]
    after = queries.decisions(db, after_id=got[-2]["id"], limit=None)
    assert [r["queue_id"] for r in after] == ["Q29"]


def test_a_root_command_leaves_the_wal_files_to_the_database_owner(tmp_path: Path) -> None:
    """The TUI and the admin commands run as root; the daemon as its own user. Whoever opens
    the database first must not leave -wal and -shm files the daemon cannot write."""
    import os

    assert os.geteuid() == 0, "the tests run as root: make test"
    path = tmp_path / "owned.db"
    open_db(path).conn.close()
    os.chown(path, 65534, 65534)  # as if the daemon's user had created it
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"owned.db{suffix}").unlink(missing_ok=True)
    db = open_db(path)
    db.execute("CREATE TABLE t (x)")
    for suffix in ("-wal", "-shm"):
        st = (tmp_path / f"owned.db{suffix}").stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534), suffix
