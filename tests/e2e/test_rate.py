"""Rate caps, locks, notices and the quarantine, through a real Postfix and its hold queue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from postwarden.config import load_config
from postwarden.store import open_db
from tests.dkim_verify import dkimpy_results, opendkim_results, records_for
from tests.e2e.conftest import Stack, held_ids, module_stack, pw, sink_with
from tests.helpers import message

EXTRA_POLICY = """
[users."spammer@example.com"]
rate = { messages = ["20/minute"] }

[users."k@example.com"]
rate = { messages = ["3/minute"] }
"""
SPAMMER = "sasl:spammer@example.com"


@pytest.fixture(scope="module")
def rate_stack() -> Iterator[Stack]:
    for s in module_stack("rate", EXTRA_POLICY):
        s.start()
        yield s


def test_a_compromised_account_is_stopped_at_its_cap_and_nothing_is_lost(rate_stack: Stack) -> None:
    sb = rate_stack.sandbox
    started = time.monotonic()

    def session(n: int) -> list[int]:
        codes = []
        for i in range(25):
            r = sb.smtp_send(
                message(from_="spammer@example.com", subject=f"spam-{n:02d}-{i:02d}"),
                "spammer@example.com",
                ["victim@remote.test"],
                login="spammer@example.com",
            )
            codes.append(r.code)
        return codes

    with ThreadPoolExecutor(10) as pool:
        codes = [c for batch in pool.map(session, range(10)) for c in batch]
    assert time.monotonic() - started < 60, "the 250 messages must go within one minute"
    assert codes == [250] * 250  # held mail is accepted by Postfix: the sender sees no error

    assert sb.wait_for(lambda: len(rate_stack.decisions(sender=SPAMMER)) == 250, 30)
    rows = rate_stack.decisions(sender=SPAMMER)
    actions = [r["action"] for r in rows]
    assert actions.count("accept") == 20 and actions.count("quarantine") == 230
    assert len({r["queue_id"] for r in rows}) == 250  # one row each, none lost
    # The first excess message locked the sender; every later one met the lock. (Rows are
    # written in the order threads finish, which need not be the order their counts were
    # taken, so this counts rather than reading the rows in order.)
    keys = [tuple(f"{x['check']}.{x['code']}" for x in r["reasons"]) for r in rows]  # type: ignore[union-attr]
    assert sorted(set(keys)) == [(), ("rate.exceeded", "rate.locked_now"), ("rate.locked",)]
    assert (
        keys.count(()),
        keys.count(("rate.exceeded", "rate.locked_now")),
        keys.count(("rate.locked",)),
    ) == (20, 1, 229)
    first_excess = keys.index(("rate.exceeded", "rate.locked_now"))

    held_rows = {str(r["queue_id"]) for r in rows if r["action"] == "quarantine"}
    assert sb.wait_for(lambda: held_rows <= held_ids(rate_stack), 30)
    assert sb.wait_for(lambda: len(sink_with(rate_stack, "spam-")) == 20, 30)
    time.sleep(2)
    assert len(sink_with(rate_stack, "spam-")) == 20  # exactly 20 reach the sink

    db = open_db(rate_stack.db_path, readonly=True)
    lock = db.execute("SELECT cap, queue_id FROM locks WHERE identity = ?", [SPAMMER]).fetchone()
    assert lock == ("messages 20/minute", rows[first_excess]["queue_id"])
    # one notice goes out, and it is neither counted nor held
    sb.kick_pickup()
    assert sb.wait_for(lambda: len(sink_with(rate_stack, f"postwarden: {SPAMMER} locked")) == 1, 60)
    notice = [r for r in rate_stack.decisions() if str(r["subject"]).startswith("postwarden:")]
    assert [r["reasons"][0]["code"] for r in notice] == ["notice"]  # type: ignore[index]
    assert notice[0]["identity"] == "local:<>" and notice[0]["signatures"] == []

    senders = json.loads(pw(rate_stack, "senders", "--json").stdout)
    assert senders[0]["identity"] == SPAMMER and senders[0]["locked"] is True


def test_quarantine_list_release_delete_and_unlock(rate_stack: Stack) -> None:
    sb = rate_stack.sandbox
    listing = json.loads(
        pw(
            rate_stack, "quarantine", "list", "--sender", SPAMMER, "--json", "--per-page", "10"
        ).stdout
    )
    assert listing["total"] == 230 and len(listing["messages"]) == 10
    first = listing["messages"][0]
    assert first["identity"] == SPAMMER and first["reasons"][0] in ("rate.locked", "rate.exceeded")
    out = pw(rate_stack, "quarantine", "list", "--sender", SPAMMER).stdout
    assert out.rstrip().endswith("230 held; page 1 of 5")

    shown = pw(rate_stack, "quarantine", "show", first["queue_id"])
    assert shown.returncode == 0 and "spam-" in shown.stdout and "*** rate." in shown.stdout

    # Release one: it reaches the sink with the same queue id, its DKIM signature intact.
    released = first["queue_id"]
    res = pw(rate_stack, "quarantine", "release", released, "--note", "false positive")
    assert res.returncode == 0 and "released 1 message(s) with 1 postsuper call(s)" in res.stdout
    assert sb.wait_for(lambda: released in sb.sink_queue_ids(), 30)
    raw = next(
        p.read_bytes()
        for p in sb.sink_dir.iterdir()
        if f" id {released}".encode() in p.read_bytes()
        or f"id {released}".encode() in p.read_bytes()
    )
    keys = [k for ks in load_config(rate_stack.config).keys.values() for k in ks]
    assert dkimpy_results(raw, records_for(keys)) == [True, True]
    assert opendkim_results(raw, records_for(keys)) == ["pass", "pass"]

    # Delete one: it is gone.
    deleted = listing["messages"][1]["queue_id"]
    assert pw(rate_stack, "quarantine", "delete", deleted).returncode == 0
    assert deleted not in held_ids(rate_stack) and deleted not in sb.sink_queue_ids()

    db = open_db(rate_stack.db_path, readonly=True)
    audit = db.execute(
        "SELECT actor, action, target, note FROM audit WHERE action LIKE 'quarantine.%' ORDER BY id"
    ).fetchall()
    assert [(a[1], a[2], a[3]) for a in audit] == [
        ("quarantine.release", released, "false positive"),
        ("quarantine.delete", deleted, ""),
    ]
    assert all(a[0] for a in audit)  # who

    # Unlock: the next message is accepted; the rest stays held until released.
    res = pw(rate_stack, "unlock", SPAMMER, "--note", "password reset")
    assert res.returncode == 0
    r = sb.smtp_send(
        message(from_="spammer@example.com", subject="after unlock"),
        "spammer@example.com",
        ["x@remote.test"],
        login="spammer@example.com",
    )
    assert rate_stack.decision_for(r.queue_id)["action"] == "accept"
    assert pw(rate_stack, "unlock", SPAMMER).returncode == 1  # not locked any more
    res = pw(rate_stack, "quarantine", "release", "--sender", SPAMMER)
    assert "released 228 message(s) with 1 postsuper call(s)" in res.stdout
    assert sb.wait_for(lambda: not held_ids(rate_stack), 30)


def test_recipients_and_messages_are_counted_separately(rate_stack: Stack) -> None:
    rcpts = [f"r{i}@remote.test" for i in range(16)]
    r = rate_stack.sandbox.smtp_send(
        message(from_="list@example.com", subject="sixteen"),
        "list@example.com",
        rcpts,
        login="list@example.com",
    )
    assert r.code == 250
    rate_stack.decision_for(r.queue_id)
    [s] = [
        x
        for x in json.loads(pw(rate_stack, "senders", "--json").stdout)
        if x["identity"] == "sasl:list@example.com"
    ]
    assert [m["used"] for m in s["messages"]] == [1, 1, 1]
    assert [m["used"] for m in s["recipients"]] == [16, 16]


def test_the_window_survives_kill_9_and_a_restart(rate_stack: Stack) -> None:
    sb = rate_stack.sandbox

    def send(i: int) -> str:
        r = sb.smtp_send(
            message(from_="k@example.com", subject=f"k-{i}"),
            "k@example.com",
            ["x@remote.test"],
            login="k@example.com",
        )
        assert r.code == 250
        return str(rate_stack.decision_for(r.queue_id)["action"])

    assert [send(i) for i in range(3)] == ["accept"] * 3
    assert sb.milter_proc is not None
    sb.milter_proc.kill()
    sb.milter_proc.wait()
    sb.start_milter(rate_stack.config)
    assert send(3) == "quarantine"  # still the same minute: the fourth breaks 3/minute
