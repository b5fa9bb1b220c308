"""Rate caps: the pure check, table-driven, and the store's exact counting under contention."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from postwarden.config.models import (
    BulkSection,
    DomainPolicy,
    Policy,
    RateOverride,
    RateSection,
    UserPolicy,
)
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.model import Lock, RateState
from postwarden.store import migrate, open_db
from postwarden.store.rates import RateStore

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={
        "example.com": DomainPolicy(rate=RateOverride(messages=["60/minute"])),
        "example.org": DomainPolicy(),
    },
    users={"vip@example.com": UserPolicy(rate=RateOverride(recipients=["1000/minute"]))},
    rate=RateSection(
        messages=["10/minute", "50/hour"], recipients=["20/minute"], notify=["pm@example.net"]
    ),
    outbound=["sasl", "local"],
    bulk=BulkSection(recipients=10_000),  # a big list here is about caps, not the bulk rules
)


def facts(login: str = "alice@example.org", rcpts: int = 1, **kw: object) -> Facts:
    base: dict[str, object] = {
        "auth_login": login,
        "mail_from": login,
        "client_port": 1000,
        "rcpts": tuple(f"r{i}@remote.test" for i in range(rcpts)),
        "headers": (("From", login or "a@example.com"),),
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def state(**windows: tuple[int, int]) -> RateState:
    sizes = {"minute": 60, "hour": 3600, "day": 86400}
    return RateState(counts=tuple((sizes[k], m, r) for k, (m, r) in windows.items()))


@pytest.mark.parametrize(
    ("login", "rcpts", "st", "action", "codes"),
    [
        ("alice@example.org", 1, state(minute=(9, 9)), Action.ACCEPT, []),
        (
            "alice@example.org",
            1,
            state(minute=(10, 10)),
            Action.QUARANTINE,
            ["rate.exceeded", "rate.locked_now"],
        ),
        (
            "alice@example.org",
            1,
            state(minute=(0, 0), hour=(50, 50)),
            Action.QUARANTINE,
            ["rate.exceeded", "rate.locked_now"],
        ),
        # recipients count separately: 16 recipients on top of 5 breaks 20/minute
        (
            "alice@example.org",
            16,
            state(minute=(1, 5)),
            Action.QUARANTINE,
            ["rate.exceeded", "rate.locked_now"],
        ),
        ("alice@example.org", 15, state(minute=(1, 5)), Action.ACCEPT, []),
        # the login's domain overrides messages only; recipients keep [rate]'s cap
        ("bob@example.com", 1, state(minute=(30, 0)), Action.ACCEPT, []),
        (
            "bob@example.com",
            1,
            state(minute=(60, 0)),
            Action.QUARANTINE,
            ["rate.exceeded", "rate.locked_now"],
        ),
        # a [users] entry overrides recipients only: messages stay the domain's 60/minute
        ("vip@example.com", 500, state(minute=(59, 400)), Action.ACCEPT, []),
        (
            "vip@example.com",
            1,
            state(minute=(60, 0)),
            Action.QUARANTINE,
            ["rate.exceeded", "rate.locked_now"],
        ),
    ],
)
def test_caps(login: str, rcpts: int, st: RateState, action: Action, codes: list[str]) -> None:
    v = evaluate(facts(login, rcpts), POLICY, NOW, st)
    assert v.action == action
    assert [r.key for r in v.reasons] == codes
    assert v.count is True  # accepted or held: both use the allowance
    assert v.lock_cap == (next((r.detail for r in v.reasons if r.key == "rate.locked_now"), ""))


def test_a_locked_sender_is_held_whatever_its_counts() -> None:
    lock = Lock("sasl:alice@example.org", "2026-11-23T09:59:00+00:00", "messages 10/minute", "Q1")
    v = evaluate(facts(), POLICY, NOW, RateState(lock=lock))
    assert v.action == Action.QUARANTINE and [r.key for r in v.reasons] == ["rate.locked"]
    assert "locked since 2026-11-23T09:59:00Z (messages 10/minute)" in v.reasons[0].text
    assert v.lock_cap == ""  # already locked: no new lock, no new notice


def test_a_rejected_message_uses_no_allowance() -> None:
    v = evaluate(
        facts(headers=(("From", "x@elsewhere.test"),)), POLICY, NOW, state(minute=(10, 10))
    )
    assert v.action == Action.REJECT
    assert [r.key for r in v.reasons] == ["from_domain.not_hosted"]  # the cap is not even looked at
    assert v.count is False


@pytest.mark.parametrize(
    ("on_exceed", "lock", "action", "locks"),
    [
        ("tempfail", False, Action.TEMPFAIL, False),
        ("reject", True, Action.REJECT, True),
        ("quarantine", False, Action.QUARANTINE, False),
    ],
)
def test_on_exceed_and_lock(on_exceed: str, lock: bool, action: Action, locks: bool) -> None:
    policy = POLICY.model_copy(
        update={"rate": RateSection(messages=["1/minute"], on_exceed=on_exceed, lock=lock)}
    )  # type: ignore[arg-type]
    v = evaluate(facts(), policy, NOW, state(minute=(1, 1)))
    assert v.action == action
    assert bool(v.lock_cap) is locks
    assert v.count is (action == Action.QUARANTINE)


def test_inbound_and_notices_are_never_counted() -> None:
    inbound = evaluate(
        facts(login="", client_port=40000, headers=(("From", "x@example.com"),)),
        POLICY,
        NOW,
        state(minute=(99, 99)),
    )
    assert inbound.count is False and inbound.action == Action.ACCEPT
    notice = evaluate(
        facts(login="", local_submission=True, system_notice=True),
        POLICY,
        NOW,
        RateState(lock=Lock("local:<>", "t", "c", "q")),
    )
    assert notice.count is False and [r.key for r in notice.reasons] == ["outbound.notice"]


def test_rate_windows_cover_every_override() -> None:
    assert POLICY.rate_windows() == [60, 3600]


def _hammer(path: str, n: int, limit: int, out: list[bool]) -> None:
    store = RateStore(path)
    for _ in range(n):
        with store.transaction("sasl:x", [60], datetime.now(UTC)) as tx:
            ok = tx.state.in_window(60)[0] < limit
            if ok:
                tx.count(1, "Q")
        out.append(ok)


def test_counting_is_exact_under_many_threads(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    results: list[bool] = []
    threads = [
        threading.Thread(target=_hammer, args=(str(db), 40, 100, results)) for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 100 and len(results) == 400


def test_counting_is_exact_across_two_processes(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    code = (
        "import sys; from tests.unit.test_rate import _hammer; out=[]; "
        "_hammer(sys.argv[1], 150, 100, out); print(out.count(True))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    taken = [int(p.communicate()[0]) for p in procs]
    assert sum(taken) == 100, taken


def test_old_events_leave_the_window(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    store = RateStore(db)
    with store.transaction("sasl:x", [60], NOW - timedelta(seconds=61)) as tx:
        tx.count(5, "old")
    with store.transaction("sasl:x", [60], NOW - timedelta(seconds=59)) as tx:
        tx.count(2, "new")
    assert store.state("sasl:x", [60, 3600], NOW).counts == ((60, 1, 2), (3600, 2, 7))


def test_running_totals_stay_exact_after_pruning_and_out_of_order_clocks(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    store = RateStore(db)
    for i in range(50):  # one every 30 minutes, the last 1 minute ago
        with store.transaction("sasl:x", [3600], NOW - timedelta(minutes=1 + 30 * (49 - i))) as tx:
            tx.count(2, f"Q{i}")
    assert store.state("sasl:x", [60, 3600, 86400], NOW).counts == (
        (60, 0, 0),
        (3600, 2, 4),
        (86400, 48, 96),
    )
    # the old ones pruned: the windows still count only what is in them
    open_db(db).execute(
        "DELETE FROM rate_events WHERE time < ?", [(NOW - timedelta(hours=20)).timestamp()]
    )
    assert store.state("sasl:x", [3600, 86400], NOW).counts == ((3600, 2, 4), (86400, 40, 80))
    # a message whose clock is behind the last one recorded still counts, in order
    with store.transaction("sasl:x", [3600], NOW - timedelta(hours=5)) as tx:
        tx.count(1, "late")
    assert store.state("sasl:x", [3600], NOW).counts == ((3600, 3, 5),)


def _reference_state(
    conn: object, identity: str, windows: list[int], now: float
) -> tuple[tuple[float, int, int] | None, float, RateState]:
    """The transaction's read as it was before it was one statement: the latest event, the
    lock, then one query a window, ending at the later of now and the latest event."""
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    row = conn.execute(
        "SELECT time, cum_msgs, cum_rcpts FROM rate_events WHERE identity = ?"
        " ORDER BY time DESC, id DESC LIMIT 1",
        [identity],
    ).fetchone()
    latest = (float(row[0]), int(row[1]), int(row[2])) if row else None
    at = max(now, latest[0]) if latest else now
    lk = conn.execute(
        "SELECT locked_at, cap, queue_id FROM locks WHERE identity = ?", [identity]
    ).fetchone()
    counts = []
    for w in windows:
        first = conn.execute(
            "SELECT cum_msgs - 1, cum_rcpts - rcpts FROM rate_events WHERE identity = ?"
            " AND time > ? ORDER BY time, id LIMIT 1",
            [identity, at - w],
        ).fetchone()
        if latest is None or first is None:
            counts.append((w, 0, 0))
        else:
            counts.append((w, latest[1] - int(first[0]), latest[2] - int(first[1])))
    lock = Lock(identity, lk[0], lk[1], lk[2]) if lk else None
    return latest, at, RateState(lock=lock, counts=tuple(counts))


def test_the_one_statement_read_equals_a_query_a_window(tmp_path: Path) -> None:
    """The rate transaction reads the sender's latest event, lock and every window in one
    statement (issue 21: one GIL hand-over inside the transaction instead of six): over random
    histories (clocks out of order, several senders, locks, pruning) it reads what one query a
    window read, at 200 points in time."""
    import random

    from postwarden.store.rates import _snapshot

    db = tmp_path / "p.db"
    migrate(open_db(db))
    store = RateStore(db)
    rnd = random.Random(21)
    base = NOW.timestamp()
    senders = ["sasl:a", "sasl:b", "local:c"]
    for i in range(400):
        who = rnd.choice(senders)
        at = datetime.fromtimestamp(base - rnd.uniform(0, 2 * 86400), UTC)
        with store.transaction(who, [60, 3600, 86400], at) as tx:
            tx.count(rnd.randint(0, 30), f"Q{i}")
            if rnd.random() < 0.01:
                tx.lock("10/minute", f"Q{i}")
    conn = open_db(db).conn
    conn.execute("DELETE FROM rate_events WHERE time < ?", [base - 1.5 * 86400])
    checked = 0
    for _ in range(200):
        who = rnd.choice([*senders, "sasl:nobody"])
        now = base - rnd.uniform(-600, 86400)
        windows = rnd.sample([60, 300, 3600, 86400], rnd.randint(0, 4))
        assert _snapshot(conn, who, windows, now, True) == _reference_state(
            conn, who, windows, now
        ), (who, windows, now)
        checked += 1
    assert checked == 200


# ---- group commit (issue 21): messages that queue for the rate lock share one transaction ----


def _store(tmp_path: Path) -> tuple[RateStore, Path]:
    db = tmp_path / "p.db"
    migrate(open_db(db))
    return RateStore(db), db


def _events(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:  # another connection: what is committed
        return int(conn.execute("SELECT COUNT(*) FROM rate_events").fetchone()[0])


def _wait_queued(store: RateStore, n: int) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while store._queued < n:
        assert datetime.now(UTC) < deadline, "the other threads never queued"
        threading.Event().wait(0.001)


def test_messages_queued_behind_one_share_its_commit_and_stay_exact(tmp_path: Path) -> None:
    """20 threads, one sender, a cap of 15: the first holds its transaction until the other 19
    queue for the lock; they then join it 8 at a time. Exactly 15 are counted, fewer commits
    than messages are made, and every count is committed when its transaction returns."""
    store, db = _store(tmp_path)
    results: list[tuple[bool, int]] = []
    go = threading.Event()

    def one(first: bool) -> None:
        with store.transaction("sasl:x", [60], datetime.now(UTC)) as tx:
            if first:
                go.set()
                _wait_queued(store, 19)
            ok = tx.state.in_window(60)[0] < 15
            if ok:
                tx.count(1, "Q")
        results.append((ok, _events(db)))  # committed by the time it returns

    first = threading.Thread(target=one, args=(True,), daemon=True)
    first.start()
    go.wait(10)
    others = [threading.Thread(target=one, args=(False,), daemon=True) for _ in range(19)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(30)
    assert sum(ok for ok, _ in results) == 15 and _events(db) == 15
    # Each saw at least its own count committed (the ones after the cap: the 15 before it).
    n_counted = 0
    for ok, seen in sorted(results, key=lambda r: r[1]):
        n_counted += ok
        assert seen >= min(n_counted, 15)
    assert 2 <= store.commits < 20  # 1 + 19 joining 8 at a time: 3 commits, give or take


def _two_in_one_group(
    store: RateStore, second_writes: bool, sqlite_ends_it: bool = False
) -> tuple[BaseException | None, BaseException | None]:
    """A holds its transaction (counted) until B queues; B joins the group, counts if
    `second_writes`, then fails (after SQLite rolled the transaction back by itself, as on
    a full disk, if `sqlite_ends_it`). Returns what each got."""
    got: dict[str, BaseException | None] = {"A": None, "B": None}
    a_in = threading.Event()

    def a() -> None:
        try:
            with store.transaction("sasl:a", [60], datetime.now(UTC)) as tx:
                tx.count(1, "QA")
                a_in.set()
                _wait_queued(store, 1)
        except BaseException as exc:  # noqa: BLE001  (what A got is the test's result)
            got["A"] = exc

    def b() -> None:
        try:
            with store.transaction("sasl:b", [60], datetime.now(UTC)) as tx:
                if second_writes:
                    tx.count(1, "QB")
                if sqlite_ends_it:
                    tx.conn.execute("ROLLBACK")
                    return  # as if nothing had failed: the commit finds no transaction
                raise RuntimeError("B failed")
        except BaseException as exc:  # noqa: BLE001
            got["B"] = exc

    ta = threading.Thread(target=a, daemon=True)
    ta.start()
    a_in.wait(10)
    tb = threading.Thread(target=b, daemon=True)
    tb.start()
    ta.join(10)
    tb.join(10)
    return got["A"], got["B"]


def test_a_message_failing_after_its_writes_rolls_back_the_group_and_fails_all_of_it(
    tmp_path: Path,
) -> None:
    """Its writes cannot be taken back alone: nothing of the group is counted, and A, whose
    transaction had gone well, is told its commit failed (the milter tempfails it)."""
    from postwarden.store.rates import RateCommitFailed

    store, db = _store(tmp_path)
    a, b = _two_in_one_group(store, second_writes=True)
    assert isinstance(b, RuntimeError) and isinstance(a, RateCommitFailed)
    assert _events(db) == 0 and store.commits == 0
    # The store serves on: a new group.
    with store.transaction("sasl:c", [60], datetime.now(UTC)) as tx:
        tx.count(1, "QC")
    assert _events(db) == 1


def test_a_message_failing_before_any_write_leaves_the_group_alone(tmp_path: Path) -> None:
    """A failure before any write (a signing failure raised under the real verdict, a
    refusal's reply that could not be given) costs the others nothing."""
    store, db = _store(tmp_path)
    a, b = _two_in_one_group(store, second_writes=False)
    assert isinstance(b, RuntimeError) and a is None
    assert _events(db) == 1 and store.commits == 1


def test_the_decision_writer_commits_an_open_group_before_its_batch(tmp_path: Path) -> None:
    """SQLite has one write lock: the writer's turn commits the group the rate transactions
    left open (its messages wait for that commit), instead of waiting out the busy timeout."""
    store, db = _store(tmp_path)
    done = threading.Event()

    def a() -> None:
        with store.transaction("sasl:a", [60], datetime.now(UTC)) as tx:
            tx.count(1, "QA")
            store._queued += 1  # as if another message queued: the group stays open
        done.set()

    t = threading.Thread(target=a, daemon=True)
    t.start()
    assert not done.wait(0.3) and _events(db) == 0  # waiting for the group's commit
    store._queued -= 1
    with store.write_lock:
        assert _events(db) == 1
    assert done.wait(5)
    t.join(5)


def test_a_group_sqlite_ended_by_itself_is_never_joined(tmp_path: Path) -> None:
    """SQLite may roll a transaction back by itself (disk full, I/O error). A and B, in it,
    fail; C, queued behind them, must not write into the ended group (its row would be
    committed at once, outside any transaction, for a message told its commit failed): it
    starts a transaction of its own. What is counted is exactly what succeeded."""
    from postwarden.store.rates import RateCommitFailed

    store, db = _store(tmp_path)
    got: dict[str, BaseException | None] = {}
    a_in, b_in = threading.Event(), threading.Event()

    def run(name: str, body: Any) -> None:
        try:
            with store.transaction(f"sasl:{name}", [60], datetime.now(UTC)) as tx:
                body(tx)
            got[name] = None
        except BaseException as exc:  # noqa: BLE001  (what each got is the test's result)
            got[name] = exc

    def a(tx: Any) -> None:
        tx.count(1, "QA")
        a_in.set()
        _wait_queued(store, 1)

    def b(tx: Any) -> None:
        tx.conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL
        b_in.set()
        _wait_queued(store, 1)

    def c(tx: Any) -> None:
        tx.count(1, "QC")

    threads = []
    for name, body, after in (("a", a, a_in), ("b", b, b_in), ("c", c, None)):
        t = threading.Thread(target=run, args=(name, body), daemon=True)
        t.start()
        threads.append(t)
        if after is not None:
            assert after.wait(10)
    for t in threads:
        t.join(10)
    assert isinstance(got["a"], RateCommitFailed) and isinstance(got["b"], RateCommitFailed)
    assert got["c"] is None and _events(db) == 1  # C's, in a transaction of its own


def test_the_daemon_s_writer_and_milter_share_one_rate_store(tmp_path: Path) -> None:
    """The writer's turn must be the milter's lock: with a RateStore each, its batches waited
    in SQLite's busy handler behind the milter's transactions."""
    import signal

    from postwarden.config import load_config
    from postwarden.milter.daemon import HANDLED_SIGNALS, Daemon
    from tests.helpers import write_config

    daemon = Daemon(load_config(write_config(tmp_path)))
    try:
        assert daemon.writer._write_lock.store is daemon.runtime.rates  # type: ignore[attr-defined]
    finally:
        daemon.writer.flush_and_stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # Daemon() blocks them
