"""[store].shared: the Redis rate store against a real redis-server (Debian's), started here on a
free loopback port and a unix socket: exact counts under contention from threads and from two
processes (two servers), locks and unlocks seen by every client, rollback, a lost lease, Redis
down and back, persistence across a restart, the notice tokens, the shared sets, the move from
SQLite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from postwarden import senders
from postwarden.cli import main
from postwarden.config import load_config
from postwarden.config.models import Policy, RateSection, StoreSection
from postwarden.milter.notify import NoticeGuard, notice_token
from postwarden.sandbox import free_port
from postwarden.store import migrate, open_db
from postwarden.store import shared as sh
from postwarden.store.rates import RateStore
from postwarden.store.shared import (
    RedisRateStore,
    RedisUsedTokens,
    SharedBusy,
    SharedConfigError,
    SharedSet,
    SharedUnavailable,
    connect,
    move_to_shared,
    open_rates,
)
from tests.helpers import write_config
from tests.redisserver import RedisServer

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def store(server: RedisServer) -> RedisRateStore:
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    server.client().flushall()
    return RedisRateStore(connect(server.url))


def _hammer(url: str, n: int, limit: int, out: list[bool]) -> None:
    store = RedisRateStore(connect(url))
    for _ in range(n):
        with store.transaction("sasl:x", [60], datetime.now(UTC)) as tx:
            ok = tx.state.in_window(60)[0] < limit
            if ok:
                tx.count(1, "Q")
        out.append(ok)


def test_counting_is_exact_under_many_threads(store: RedisRateStore, server: RedisServer) -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(target=_hammer, args=(server.url, 40, 100, results)) for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 100 and len(results) == 400
    assert store.state("sasl:x", [60], datetime.now(UTC)).in_window(60) == (100, 100)


def test_counting_is_exact_across_two_processes(store: RedisRateStore, server: RedisServer) -> None:
    """Two processes, each with its own client: two servers naming one Redis."""
    code = (
        "import sys; from tests.unit.test_shared_store import _hammer; out=[]; "
        "_hammer(sys.argv[1], 150, 100, out); print(out.count(True))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, server.url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    taken = [int(p.communicate()[0]) for p in procs]
    assert sum(taken) == 100, taken


def test_windows_and_out_of_order_clocks_as_sqlite(store: RedisRateStore, tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    lite = RateStore(db)
    for s in (store, lite):
        with s.transaction("sasl:x", [60], NOW - timedelta(seconds=61)) as tx:
            tx.count(5, "old")
        with s.transaction("sasl:x", [60], NOW - timedelta(seconds=59)) as tx:
            tx.count(2, "new")
        # a clock behind the latest event still counts, after it
        with s.transaction("sasl:x", [60], NOW - timedelta(hours=5)) as tx:
            assert tx.state.in_window(60) == (2, 7)  # counted back from the latest event
            tx.count(1, "late")
    assert (
        store.state("sasl:x", [60, 3600], NOW).counts
        == lite.state("sasl:x", [60, 3600], NOW).counts
        == ((60, 2, 3), (3600, 3, 8))
    )


def test_a_lock_is_seen_by_every_client_and_unlock_lifts_it(
    store: RedisRateStore, server: RedisServer
) -> None:
    other = RedisRateStore(connect(server.unix_url))  # a second server, over the unix socket
    with store.transaction("sasl:spam", [60], NOW) as tx:
        tx.count(1, "Q1")
        tx.lock("messages 1/minute", "Q1")
    with other.transaction("sasl:spam", [60], NOW) as tx:
        assert tx.state.lock is not None
        assert (tx.state.lock.cap, tx.state.lock.queue_id) == ("messages 1/minute", "Q1")
        tx.lock("messages 1/minute", "Q2")  # already locked: the first lock stays
    assert other.identities(NOW.timestamp() - 60, locked_only=True) == {"sasl:spam"}
    assert other.read("sasl:spam", [60], NOW.timestamp()).lock.queue_id == "Q1"  # type: ignore[union-attr]
    assert other.unlock("sasl:spam") is True
    assert store.state("sasl:spam", [60], NOW) == sh.RateState(lock=None, counts=((60, 0, 0),))
    assert store.unlock("sasl:spam") is False
    assert store.identities(NOW.timestamp() - 60, locked_only=False) == set()


def test_a_failed_transaction_writes_nothing_and_frees_the_sender(store: RedisRateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction("sasl:x", [60], NOW) as tx:
        tx.count(1, "Q")
        tx.lock("c", "Q")
        raise RuntimeError("postfix step failed")
    started = time.monotonic()
    with store.transaction("sasl:x", [60], NOW) as tx:
        assert tx.state.in_window(60) == (0, 0) and tx.state.lock is None
    assert time.monotonic() - started < 0.5  # the mutex was freed, not left to its lease


def test_a_lost_lease_commits_nothing(store: RedisRateStore, server: RedisServer) -> None:
    mutex = sh._keys("sasl:x")[0]
    with pytest.raises(SharedBusy), store.transaction("sasl:x", [60], NOW) as tx:
        tx.count(1, "Q")
        server.client().set(mutex, "another server's token")  # our lease ran out, it took it
    server.client().delete(mutex)
    assert store.state("sasl:x", [60], NOW).in_window(60) == (0, 0)


def test_redis_down_fails_fast_and_the_client_reconnects(
    store: RedisRateStore, server: RedisServer
) -> None:
    with store.transaction("sasl:x", [60], NOW) as tx:
        tx.count(1, "Q")
    server.stop()
    started = time.monotonic()
    with pytest.raises(SharedUnavailable), store.transaction("sasl:x", [60], NOW):
        pass
    assert time.monotonic() - started < 5
    server.start()  # the same port, its AOF reloaded
    with store.transaction("sasl:x", [60], NOW) as tx:  # the same client, reconnected
        assert tx.state.in_window(60) == (1, 1)  # the count survived the restart


def test_counts_survive_a_crash_as_far_as_the_aof_goes(
    store: RedisRateStore, server: RedisServer
) -> None:
    for i in range(5):
        with store.transaction("sasl:x", [60], NOW) as tx:
            tx.count(1, f"Q{i}")
    time.sleep(1.5)  # appendfsync everysec: at most the last second is lost
    server.stop(signal.SIGKILL)
    server.start()
    assert store.state("sasl:x", [60], NOW).in_window(60) == (5, 5)


def test_unix_socket_and_password_file(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "r", password="s3cret word")
    srv.start()
    try:
        (tmp_path / "pw").write_text("s3cret word\n")
        store = open_rates(
            StoreSection(
                database=str(tmp_path / "p.db"),
                shared=srv.unix_url,
                shared_password_file=str(tmp_path / "pw"),
            )
        )
        assert isinstance(store, RedisRateStore)
        with store.transaction("sasl:x", [60], NOW) as tx:
            tx.count(3, "Q")
        assert store.state("sasl:x", [60], NOW).in_window(60) == (1, 3)
        nopw = RedisRateStore(connect(srv.url))
        with pytest.raises(redis.AuthenticationError):
            nopw.state("sasl:x", [60], NOW)
    finally:
        srv.stop()
    with pytest.raises(SharedConfigError, match="shared_password_file"):
        connect("redis://127.0.0.1:1/0", str(tmp_path / "missing"))
    assert isinstance(open_rates(StoreSection(database=str(tmp_path / "p.db"))), RateStore)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "no password inline"),
        ("http://127.0.0.1:6379/0", "want "),
        ("unix://relative", "absolute path"),
        ("redis://127.0.0.1:99999999/0", "not a Redis address"),
    ],
)
def test_the_config_refuses_bad_addresses(value: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        StoreSection(shared=value)


def test_rediss_and_unix_addresses_are_taken() -> None:
    for value in ("rediss://redis.example.net:6380/2", "unix:///run/redis/redis.sock?db=3"):
        assert StoreSection(shared=value).shared == value


def test_a_notice_token_is_used_once_across_servers(store: RedisRateStore) -> None:
    a = NoticeGuard("k", RedisUsedTokens(store.client))
    b = NoticeGuard("k", RedisUsedTokens(store.client))
    now = time.time()
    token = notice_token("k", "<m@x>", int(now), ["pm@example.net"], "pw <pm@x>")
    args = ("<m@x>", "pw <pm@x>", "", ["pm@example.net"], now)
    assert a.check(token, *args) is True
    assert b.check(token, *args) is False  # used on the other server
    assert (
        store.client.ttl(f"{sh.PREFIX}notice:" + __import__("hashlib").sha256(b"<m@x>").hexdigest())
        > 500
    )


def test_shared_sets(store: RedisRateStore, server: RedisServer) -> None:
    a = SharedSet(store.client, "suppressed")
    b = SharedSet(connect(server.unix_url), "suppressed")
    assert a.add("bob@example.org", '{"reason": "complaint"}') is True
    assert a.add("bob@example.org", "again") is False
    assert b.contains("bob@example.org") and b.get("bob@example.org") == "again"
    assert b.members() == {"bob@example.org": "again"}
    assert b.remove("bob@example.org") and not a.contains("bob@example.org")
    assert a.get("nobody@example.org") is None


def test_move_to_shared_copies_counts_and_locks_once(store: RedisRateStore, tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    lite = RateStore(db)
    now = datetime.now(UTC)
    for i in range(3):
        with lite.transaction("sasl:a", [60], now - timedelta(seconds=10 - i)) as tx:
            tx.count(2, f"Q{i}")
    with lite.transaction("sasl:b", [60], now) as tx:
        tx.count(1, "QB")
        tx.lock("messages 1/minute", "QB")
    conn = open_db(db).conn
    moved = move_to_shared(conn, store, "host:/p.db", now.timestamp())
    assert moved.as_dict() == {
        "identities": 2,
        "events": 4,
        "locks": 1,
        "locks_already": 0,
        "suppressions": 0,
        "suppressions_already": 0,
    }
    assert store.state("sasl:a", [60], now).in_window(60) == (3, 6)
    lock = store.state("sasl:b", [60], now).lock
    assert lock is not None and lock.queue_id == "QB"
    with pytest.raises(sh.AlreadyMoved, match="already"):
        move_to_shared(conn, store, "host:/p.db", now.timestamp())
    # and `postwarden senders` reads the same from Redis as from the database
    policy = Policy(rate=RateSection(messages=["10/minute"]), outbound=["sasl"])
    from_redis = senders.statuses(open_db(db), policy, now, shared=store)
    from_sqlite = senders.statuses(open_db(db), policy, now)
    assert [s.as_dict() for s in from_redis] == [s.as_dict() for s in from_sqlite]
    assert senders.unlock(open_db(db), "sasl:b", "test", shared=store) is True
    assert store.state("sasl:b", [60], now).lock is None
    assert lite.state("sasl:b", [60], now).lock is not None  # the database keeps its rows


def test_running_totals_stay_exact_after_pruning(
    store: RedisRateStore, server: RedisServer
) -> None:
    for i in range(50):  # one every 30 minutes, the last 1 minute ago
        with store.transaction("sasl:x", [3600], NOW - timedelta(minutes=1 + 30 * (49 - i))) as tx:
            tx.count(2, f"Q{i}")
    assert store.state("sasl:x", [60, 3600, 86400], NOW).counts == (
        (60, 0, 0),
        (3600, 2, 4),
        (86400, 48, 96),
    )
    server.client().zremrangebyscore(
        sh._keys("sasl:x")[1], "-inf", (NOW - timedelta(hours=20)).timestamp()
    )
    assert store.state("sasl:x", [3600, 86400], NOW).counts == ((3600, 2, 4), (86400, 40, 80))


def test_move_to_shared_merges_two_servers_events(store: RedisRateStore, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    for n, offsets in enumerate(([30, 10], [20, 5])):  # two servers, interleaved in time
        db = tmp_path / f"{n}.db"
        migrate(open_db(db))
        for s in offsets:
            with RateStore(db).transaction("sasl:a", [60], now - timedelta(seconds=s)) as tx:
                tx.count(s, f"Q{s}")
        move_to_shared(open_db(db).conn, store, f"host{n}:/p.db", now.timestamp())
    st = store.state("sasl:a", [15, 25, 60], now)
    assert st.counts == ((15, 2, 15), (25, 3, 35), (60, 4, 65))


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_the_commands_against_the_shared_store(
    store: RedisRateStore, server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """db move-to-shared, senders and unlock through Redis; an unreachable Redis or a missing
    password file ends them with a clear error."""
    cfg = write_config(tmp_path, daemon_extra=f'shared = "{server.url}"\n')
    db = load_config(cfg).daemon.store.database
    migrate(open_db(db))
    with RateStore(db).transaction("sasl:a@example.com", [60], datetime.now(UTC)) as tx:
        tx.count(1, "Q1")
        tx.lock("messages 1/minute", "Q1")
    assert main(["--config", str(cfg), "db", "move-to-shared", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "identities": 1,
        "events": 1,
        "locks": 1,
        "locks_already": 0,
        "suppressions": 0,
        "suppressions_already": 0,
    }
    assert main(["--config", str(cfg), "db", "move-to-shared"]) == 1
    assert "moved to the shared store already" in capsys.readouterr().err
    open_db(db).execute("DELETE FROM locks")  # what senders shows now comes from Redis alone
    assert main(["--config", str(cfg), "senders", "--locked", "--json"]) == 0
    [locked] = json.loads(capsys.readouterr().out)
    assert locked["identity"] == "sasl:a@example.com" and locked["lock_queue_id"] == "Q1"
    assert main(["--config", str(cfg), "unlock", "sasl:a@example.com"]) == 0
    assert store.state("sasl:a@example.com", [60], datetime.now(UTC)).lock is None
    capsys.readouterr()

    down = write_config(
        tmp_path / "down", daemon_extra=f'shared = "redis://127.0.0.1:{free_port()}/0"\n'
    )
    started = time.monotonic()
    assert run(["--config", str(down), "senders"]) == 75
    assert "is unreachable" in capsys.readouterr().err
    assert time.monotonic() - started < 10
    nopw = write_config(
        tmp_path / "nopw",
        daemon_extra=f'shared = "{server.url}"\nshared_password_file = "/nonexistent/pw"\n',
    )
    assert run(["--config", str(nopw), "unlock", "sasl:x"]) == 78
    assert "store.shared_password_file: cannot read /nonexistent/pw" in capsys.readouterr().err


def test_the_tui_backend_reads_and_unlocks_through_the_shared_store(
    store: RedisRateStore, server: RedisServer, tmp_path: Path
) -> None:
    from postwarden.tui.backend import Backend

    cfg = write_config(tmp_path, daemon_extra=f'shared = "{server.unix_url}"\n')
    with store.transaction("sasl:a@example.com", [60], datetime.now(UTC)) as tx:
        tx.count(1, "Q1")
        tx.lock("messages 1/minute", "Q1")
    backend = Backend(cfg)
    [s] = backend.senders()
    assert s.identity == "sasl:a@example.com" and s.locked and s.lock_queue_id == "Q1"
    assert backend.unlock("sasl:a@example.com", "tui test") is True
    assert backend.senders() == []
    assert store.state("sasl:a@example.com", [60], datetime.now(UTC)).lock is None


def test_a_commit_replayed_after_a_lost_reply_writes_nothing_twice(store: RedisRateStore) -> None:
    with store.transaction("sasl:x", [60], NOW) as tx:
        tx.count(1, "Q")
    keys = list(sh._keys("sasl:x"))
    again = store._commit(
        keys=[*keys, sh.IDS, sh.LOCKS, f"{keys[0]}:done:{tx.token}"],
        args=[tx.token, sh._ts(tx.now), sh.KEEP_EVENTS_S, "sasl:x", 1, *tx.members],
    )
    assert int(again) == 1  # the client's retry hears "committed"
    assert store.state("sasl:x", [60], NOW).in_window(60) == (1, 1)  # counted once
