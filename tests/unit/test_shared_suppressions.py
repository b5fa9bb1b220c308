"""[store].shared: the suppression list in Redis (issue 19), against a real redis-server started
here: the same answers as the SQLite list, one list seen by two clients (two servers), one round
trip per look-up, Redis down raises (the milter fails closed), the commands, `feedback ingest`,
the TUI's functions and `db move-to-shared` writing and reading Redis while the audit stays
local."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from postwarden.cli import main
from postwarden.config import load_config
from postwarden.feedback import suppression
from postwarden.feedback.ingest import ingest
from postwarden.feedback.stats import rates
from postwarden.sandbox import free_port
from postwarden.store import feedback as store
from postwarden.store import migrate, open_db
from postwarden.store.shared import (
    SUPPRESSED,
    RedisSuppressions,
    SharedUnavailable,
    connect,
)
from tests.helpers import BASIC_POLICY, write_config
from tests.redisserver import RedisServer
from tests.unit.test_feedback import _arf, _decision

NOW = "2026-11-23T10:00:00+00:00"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    c = connect(server.url)
    c.flushall()
    return c


def _db(tmp_path: Path) -> Any:
    db = open_db(tmp_path / "p.db")
    migrate(db)
    return db


def _lists(client: redis.Redis, tmp_path: Path) -> list[store.SuppressionList]:
    return [RedisSuppressions(client, "a.test"), store.LocalSuppressions(_db(tmp_path))]


def test_the_redis_list_answers_as_the_sqlite_one(client: redis.Redis, tmp_path: Path) -> None:
    for lst in _lists(client, tmp_path):
        assert lst.suppress("Bob@Remote.test", "Example.com", NOW, "admin", "by hand", "n1")
        assert not lst.suppress("bob@remote.test", "example.com", NOW, "admin", "again")
        assert lst.suppress("bob@remote.test", "", "2026-11-23T11:00:00+00:00", "admin", "all")
        assert lst.suppress("carol@remote.test", "example.net", NOW, "feedback", "abuse", "", 7)
        hit = lst.at_rcpt("BOB@remote.test", "example.com")
        assert hit is not None and hit.domain in ("", "example.com")
        assert lst.at_rcpt("carol@remote.test", "example.com") is None
        assert lst.at_rcpt("carol@remote.test", "EXAMPLE.NET") is not None
        assert lst.at_rcpt("dave@remote.test", "example.com") is None
        found = lst.for_rcpts(["bob@remote.test", "Carol@remote.test", "dave@remote.test"])
        assert sorted((s.address, s.domain, s.reason) for s in found) == [
            ("bob@remote.test", "", "all"),
            ("bob@remote.test", "example.com", "by hand"),
            ("carol@remote.test", "example.net", "abuse"),
        ]
        rows = lst.entries()
        assert [(r["address"], r["domain"]) for r in rows] == [
            ("bob@remote.test", ""),  # newest first
            ("carol@remote.test", "example.net"),
            ("bob@remote.test", "example.com"),
        ]
        assert [r["note"] for r in rows] == ["", "", "n1"]
        assert [(r["address"], r["domain"]) for r in lst.entries("example.net")] == [
            ("bob@remote.test", ""),
            ("carol@remote.test", "example.net"),
        ]
        assert lst.unsuppress("bob@remote.test", "example.com", NOW) == 1
        assert lst.unsuppress("bob@remote.test", "example.com", NOW) == 0
        assert lst.at_rcpt("bob@remote.test", "example.com") is not None  # the "" one
        assert lst.unsuppress("carol@remote.test", None, NOW) == 1
        assert lst.unsuppress("bob@remote.test", None, NOW) == 1
        assert lst.entries() == [] and lst.for_rcpts(["bob@remote.test"]) == []
    assert client.exists(SUPPRESSED) == 0  # the last entry gone, the field gone


def test_one_list_for_two_servers(server: RedisServer, client: redis.Redis) -> None:
    a = RedisSuppressions(connect(server.url), "a.test")
    b = RedisSuppressions(connect(server.unix_url), "b.test")
    assert a.suppress("bob@remote.test", "example.com", NOW, "admin", "by hand")
    found = b.at_rcpt("bob@remote.test", "example.com")
    assert found is not None and found.since == NOW and found.reason == "by hand"
    assert [r["server"] for r in b.entries()] == ["a.test"]
    assert not b.suppress("bob@remote.test", "example.com", NOW, "admin", "twice")
    assert b.unsuppress("bob@remote.test", "example.com", NOW) == 1
    assert a.at_rcpt("bob@remote.test", "example.com") is None


def test_a_look_up_is_one_round_trip(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    lst = RedisSuppressions(client)
    for n in range(50):
        lst.suppress(f"u{n}@remote.test", "example.com", NOW, "admin", "x")
    calls: list[tuple[Any, ...]] = []
    real = client.execute_command

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(client, "execute_command", counted)
    assert lst.at_rcpt("u7@remote.test", "example.com") is not None
    assert [c[0] for c in calls] == ["HGET"]
    calls.clear()
    got = lst.for_rcpts([f"u{n}@remote.test" for n in range(20)] + ["x@remote.test"])
    assert len(got) == 20 and [c[0] for c in calls] == ["HMGET"]


def test_redis_down_raises_never_an_empty_answer(server: RedisServer, client: redis.Redis) -> None:
    lst = RedisSuppressions(connect(f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    with pytest.raises(SharedUnavailable):
        lst.at_rcpt("bob@remote.test", "example.com")
    with pytest.raises(SharedUnavailable):
        lst.for_rcpts(["bob@remote.test"])
    assert time.monotonic() - started < 10
    # a value that is not what postwarden writes is an error too, not "not suppressed"
    client.hset(SUPPRESSED, "bob@remote.test", "not json")
    with pytest.raises(ValueError, match="not JSON"):
        RedisSuppressions(client).at_rcpt("bob@remote.test", "example.com")


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_the_commands_ingest_and_move_use_redis_and_audit_locally(
    server: RedisServer, client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_a = write_config(tmp_path / "a", BASIC_POLICY, daemon_extra=f'shared = "{server.url}"\n')
    cfg_b = write_config(
        tmp_path / "b", BASIC_POLICY, daemon_extra=f'shared = "{server.unix_url}"\n'
    )
    db_a = open_db(load_config(cfg_a).daemon.store.database)
    migrate(db_a)
    # Before the switch: server A's own list, with one entry removed (history, not moved).
    lite = store.LocalSuppressions(db_a)
    lite.suppress("old@remote.test", "example.com", NOW, "admin", "by hand", "moved")
    lite.suppress("gone@remote.test", "", NOW, "admin", "by hand")
    lite.unsuppress("gone@remote.test", None, NOW)
    assert main(["--config", str(cfg_a), "db", "move-to-shared", "--json"]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert (moved["suppressions"], moved["suppressions_already"]) == (1, 0)

    a = ["--config", str(cfg_a), "suppression"]
    b = ["--config", str(cfg_b), "suppression"]
    assert main([*a, "add", "bob@remote.test", "--domain", "example.com", "--note", "asked"]) == 0
    assert main([*b, "add", "bob@remote.test", "--domain", "example.com"]) == 1  # there already
    capsys.readouterr()
    assert main([*b, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((r["address"], r["domain"], r["note"]) for r in listed) == [
        ("bob@remote.test", "example.com", "asked"),
        ("old@remote.test", "example.com", "moved"),
    ]
    # the SQLite table is not written with [store].shared; each audit stays on its server
    assert db_a.execute(
        "SELECT COUNT(*) FROM suppressions WHERE address = 'bob@remote.test'"
    ).fetchone() == (0,)
    assert main([*b, "remove", "old@remote.test"]) == 0
    assert RedisSuppressions(client).at_rcpt("old@remote.test", "example.com") is None
    db_b = open_db(load_config(cfg_b).daemon.store.database)
    audit = "SELECT action, target FROM audit WHERE action LIKE 'suppression.%' ORDER BY id"
    assert [a for a, _ in db_a.execute(audit).fetchall()] == ["suppression.add"]
    assert [a for a, _ in db_b.execute(audit).fetchall()] == ["suppression.remove"]

    # feedback ingest on B: a complaint joined to B's decision suppresses on every server
    cfg = load_config(cfg_b)
    _decision(db_b, rcpts='["erin@remote.test"]')
    out = ingest(db_b, cfg, _arf(rcpt="erin@remote.test"), send=lambda *x: None)
    assert out.suppressed
    [entry] = RedisSuppressions(client).entries("example.com")[:1]
    assert (entry["address"], entry["source"], entry["feedback_type"]) == (
        "erin@remote.test",
        "feedback",
        "abuse",
    )
    assert RedisSuppressions(connect(server.url)).at_rcpt("erin@remote.test", "example.com")
    # `feedback stats` and the TUI's functions count and list the shared entries
    [row] = [
        r
        for r in rates(db_a, load_config(cfg_a), datetime.now(UTC))
        if r["domain"] == "example.com"
    ]
    assert row["suppressed"] == 2  # bob (by hand on A), erin (complaint on B)
    from postwarden.tui.backend import Backend

    backend = Backend(cfg_a)
    assert sorted(e["address"] for e in suppression.entries(backend.db, shared=backend.shared)) == [
        "bob@remote.test",
        "erin@remote.test",
    ]
    assert suppression.remove(backend.db, "erin@remote.test", None, "tui", backend.shared) == 1
    assert RedisSuppressions(client).at_rcpt("erin@remote.test", "example.com") is None

    # Redis unreachable: the commands say so and exit 75
    down = write_config(
        tmp_path / "down",
        BASIC_POLICY,
        daemon_extra=f'shared = "redis://127.0.0.1:{free_port()}/0"\n',
    )
    assert run(["--config", str(down), "suppression", "add", "x@remote.test"]) == 75
    assert "is unreachable" in capsys.readouterr().err


def test_without_shared_the_list_stays_in_sqlite(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, BASIC_POLICY)
    db = open_db(load_config(cfg).daemon.store.database)
    migrate(db)
    assert main(["--config", str(cfg), "suppression", "add", "bob@remote.test"]) == 0
    assert [r["address"] for r in store.suppressions(db)] == ["bob@remote.test"]
    lookup = store.SuppressionLookup(load_config(cfg).daemon.store.database)
    assert lookup.at_rcpt("bob@remote.test", "example.com") is not None
