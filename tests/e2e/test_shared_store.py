"""[store].shared end to end: two private Postfix instances, each with its own postwarden and its
own database, and one real redis-server (password from a file; one server over TCP, the other
over the unix socket). One set of caps, exact across both; one lock; one notice; unlock on one
lifts both; Redis stopped mid-run tempfails and loses nothing."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from postwarden.store import open_db
from tests.e2e.conftest import E2E_ROOT, Stack, pw, sink_with
from tests.helpers import message
from tests.redisserver import RedisServer

EXTRA_POLICY = """
[users."spammer@example.com"]
rate = { messages = ["20/minute"] }

[users."flow@example.com"]
rate = { messages = ["100000/minute", "100000/hour", "100000/day"], recipients = ["100000/minute", "100000/day"] }
"""
BURSTS = 3  # the 64-session run, repeated with a login of its own each time
EXTRA_POLICY += "".join(
    f'\n[users."burst{i}@example.com"]\nrate = {{ messages = ["100/minute"] }}\n'
    for i in range(BURSTS)
)
SPAMMER = "sasl:spammer@example.com"
PASSWORD = "correct horse battery staple"


@dataclass
class Pair:
    a: Stack
    b: Stack
    redis: RedisServer

    @property
    def both(self) -> tuple[Stack, Stack]:
        return self.a, self.b


def _shared_stack(root: Path, address: str, password_file: Path) -> Stack:
    s = Stack(root)
    (s.config.parent / "policies" / "20-extra.toml").write_text(EXTRA_POLICY)
    text = s.config.read_text()
    assert "retention_days = 90\n" in text
    s.config.write_text(
        text.replace(
            "retention_days = 90\n",
            f'retention_days = 90\nshared = "{address}"\nshared_password_file = "{password_file}"\n',
            1,
        )
    )
    return s


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    root = E2E_ROOT / f"shared-{uuid.uuid4().hex[:8]}"
    redis = RedisServer(root / "redis", password=PASSWORD)
    redis.start()
    pw_file = root / "redis.password"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    a = _shared_stack(root / "a", redis.url, pw_file)
    b = _shared_stack(root / "b", redis.unix_url, pw_file)
    try:
        a.start()
        b.start()
        yield Pair(a, b, redis)
    finally:
        a.stop()
        b.stop()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


def delivered(pair: Pair, token: str) -> int:
    return sum(len(sink_with(s, token)) for s in pair.both)


def held(stack: Stack) -> set[str]:
    return {str(q["queue_id"]) for q in stack.sandbox.queue() if q.get("queue_name") == "hold"}


def rows(pair: Pair, sender: str) -> list[dict[str, object]]:
    return [r for s in pair.both for r in s.decisions(sender=sender)]


def send(stack: Stack, login: str, subject: str) -> int:
    return stack.sandbox.smtp_send(
        message(from_=login, subject=subject), login, ["victim@remote.test"], login=login
    ).code


@pytest.mark.slow
def test_one_cap_across_two_servers_one_lock_one_notice(pair: Pair) -> None:
    """250 messages over both servers, 10 sessions each, within a minute: exactly 20 delivered
    in all, the rest held, the login locked on both, one notice."""
    started = time.monotonic()

    def session(n: int) -> list[int]:
        stack = pair.a if n < 10 else pair.b
        count = 13 if n % 2 == 0 else 12  # 10 x 13 + 10 x 12 = 250
        return [send(stack, "spammer@example.com", f"spam-{n:02d}-{i:02d}") for i in range(count)]

    with ThreadPoolExecutor(20) as pool:
        codes = [c for batch in pool.map(session, range(20)) for c in batch]
    assert time.monotonic() - started < 60, "the 250 messages must go within one minute"
    assert codes == [250] * 250  # held mail is accepted by Postfix: the sender sees no error

    assert pair.a.sandbox.wait_for(lambda: len(rows(pair, SPAMMER)) == 250, 30)
    found = rows(pair, SPAMMER)
    assert {len(pair.a.decisions(sender=SPAMMER)), len(pair.b.decisions(sender=SPAMMER))} != {0}
    actions = [r["action"] for r in found]
    assert actions.count("accept") == 20 and actions.count("quarantine") == 230
    keys = [tuple(f"{x['check']}.{x['code']}" for x in r["reasons"]) for r in found]  # type: ignore[union-attr]
    assert (
        keys.count(()),
        keys.count(("rate.exceeded", "rate.locked_now")),
        keys.count(("rate.locked",)),
    ) == (20, 1, 229)
    held_rows = {str(r["queue_id"]) for r in found if r["action"] == "quarantine"}
    assert pair.a.sandbox.wait_for(lambda: held_rows <= held(pair.a) | held(pair.b), 30)
    assert pair.a.sandbox.wait_for(lambda: delivered(pair, "spam-") == 20, 30)
    time.sleep(2)
    assert delivered(pair, "spam-") == 20  # exactly 20 reach the two sinks together
    # the lock is audited once, by the server that took it
    lock_rows = [
        row
        for s in pair.both
        for row in open_db(s.db_path, readonly=True)
        .execute("SELECT target, note FROM audit WHERE action = 'lock'")
        .fetchall()
    ]
    assert [t for t, _ in lock_rows] == [SPAMMER]

    # locked on both: each server's `senders` reads the one lock from Redis
    for s in pair.both:
        [locked] = json.loads(pw(s, "senders", "--locked", "--json").stdout)
        assert locked["identity"] == SPAMMER and locked["lock_cap"] == "messages 20/minute"
        assert [m["used"] for m in locked["messages"] if m["cap"] == "20/minute"] == [250]
    # one notice, from the server that took the lock, neither counted nor held
    for s in pair.both:
        s.sandbox.kick_pickup()
    assert pair.a.sandbox.wait_for(
        lambda: delivered(pair, f"postwarden: {SPAMMER} locked") == 1, 60
    )
    time.sleep(3)
    for s in pair.both:
        s.sandbox.kick_pickup()
    time.sleep(2)
    assert delivered(pair, f"postwarden: {SPAMMER} locked") == 1


@pytest.mark.slow
def test_unlock_on_one_server_lifts_the_lock_on_both(pair: Pair) -> None:
    if not json.loads(pw(pair.a, "senders", "--locked", "--json").stdout):
        # run alone: lock the spammer first (21 messages through A)
        for i in range(21):
            send(pair.a, "spammer@example.com", f"lock-{i}")
    assert json.loads(pw(pair.a, "senders", "--locked", "--json").stdout)
    res = pw(pair.b, "unlock", SPAMMER, "--note", "password reset")
    assert res.returncode == 0, res.stderr
    for s in pair.both:
        assert json.loads(pw(s, "senders", "--locked", "--json").stdout) == []
    qids = []
    for s in pair.both:
        r = s.sandbox.smtp_send(
            message(from_="spammer@example.com", subject="after unlock"),
            "spammer@example.com",
            ["x@remote.test"],
            login="spammer@example.com",
        )
        assert r.code == 250
        qids.append((s, r.queue_id))
    assert [s.decision_for(q)["action"] for s, q in qids] == ["accept", "accept"]
    assert pw(pair.a, "unlock", SPAMMER).returncode == 1  # not locked any more, anywhere
    # the unlock is audited where it was done
    audit = open_db(pair.b.db_path, readonly=True).execute(
        "SELECT action, target, note FROM audit WHERE action = 'unlock'"
    )
    assert audit.fetchall() == [("unlock", SPAMMER, "password reset")]


@pytest.mark.slow
def test_redis_stopped_mid_run_tempfails_loses_nothing_and_recovers(pair: Pair) -> None:
    results: list[tuple[str, int, float]] = []  # (subject, SMTP code, when)
    stop = threading.Event()

    def sender(n: int) -> None:
        stack = pair.a if n % 2 == 0 else pair.b
        i = 0
        while not stop.is_set():
            subject = f"flow-{n}-{i}"
            code = send(stack, "flow@example.com", subject)
            results.append((subject, code, time.monotonic()))
            i += 1

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    down_at = time.monotonic()
    pair.redis.stop()
    time.sleep(4)
    up_at = time.monotonic()
    pair.redis.start()  # the same port and socket, its AOF reloaded
    time.sleep(6)
    stop.set()
    for t in threads:
        t.join()

    codes = [c for _, c, _ in results]
    assert all(c == 250 or 400 <= c < 500 for c in codes), sorted(set(codes))  # never a 5xx
    # while Redis was down (a second's margin for messages in flight), every message got a 4xx
    down = [c for _, c, at in results if down_at + 1 < at < up_at]
    assert down and all(400 <= c < 500 for c in down), down
    # it flows again within seconds of Redis coming back
    back = sorted(at for _, c, at in results if c == 250 and at > up_at)
    assert back and back[0] - up_at < 5, "mail did not flow within 5 s of Redis coming back"
    # nothing accepted and lost, nothing tempfailed that was delivered
    accepted = {s for s, c, _ in results if c == 250}
    tempfailed = {s for s, c, _ in results if 400 <= c < 500}
    assert accepted and tempfailed

    def got() -> set[str]:
        return {
            raw.split(b"Subject: ", 1)[1].splitlines()[0].decode()
            for s in pair.both
            for raw in sink_with(s, "flow-")
        }

    pair.a.sandbox.wait_for(lambda: got() >= accepted, 60)
    assert got() == accepted, (len(accepted - got()), len(got() - accepted))
    # the tempfailed ones were refused as the milter's error, the rest decided
    errors = [r for r in rows(pair, "sasl:flow@example.com") if r["action"] == "tempfail"]
    assert errors and all(
        [(x["check"], x["code"]) for x in r["reasons"]] == [("milter", "error")]  # type: ignore[union-attr]
        for r in errors
    )
    assert any("ConnectionError" in str(r["error"]) for r in errors)
    # and Redis counted at least every accepted one (never fewer: the cap is never exceeded)
    [flow] = [
        x
        for x in json.loads(pw(pair.a, "senders", "--json").stdout)
        if x["identity"] == "sasl:flow@example.com"
    ]
    assert flow["messages"][0]["used"] >= len(accepted)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(BURSTS))
def test_64_concurrent_sessions_across_both_meet_a_100_cap_exactly(pair: Pair, run: int) -> None:
    login = f"burst{run}@example.com"
    barrier = threading.Barrier(64)

    def session(n: int) -> list[int]:
        stack = pair.a if n % 2 == 0 else pair.b
        barrier.wait()
        return [send(stack, login, f"burst{run}-{n:02d}-{i}") for i in range(3)]

    with ThreadPoolExecutor(64) as pool:
        codes = [c for batch in pool.map(session, range(64)) for c in batch]
    assert codes == [250] * 192
    assert pair.a.sandbox.wait_for(lambda: len(rows(pair, f"sasl:{login}")) == 192, 60)
    actions = [r["action"] for r in rows(pair, f"sasl:{login}")]
    assert actions.count("accept") == 100 and actions.count("quarantine") == 92
    assert pair.a.sandbox.wait_for(lambda: delivered(pair, f"burst{run}-") == 100, 30)
    time.sleep(1)
    assert delivered(pair, f"burst{run}-") == 100
