"""[store].shared end to end, the suppression list (issue 19): two private Postfix instances,
each with its own postwarden and database, one real redis-server. A recipient suppressed
through one server is refused at RCPT by the other; removed on one, it gets mail through the
other; the audit stays on the server where it was done; Redis down at RCPT tempfails (the
milter's on_error at end-of-message), never a silent pass."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from postwarden.store import open_db
from tests.e2e.test_feedback import delivered_to, queue_id_of, send, sent
from tests.e2e.test_shared_store import Pair, pair, pw

__all__ = ["pair"]  # the two servers and their Redis, as test_shared_store.py starts them

BOB = "bob@remote.test"
CAROL = "carol@remote.test"


def _audit(stack: object, action: str) -> list[tuple[str, str]]:
    conn = open_db(stack.db_path, readonly=True)  # type: ignore[attr-defined]
    return conn.execute(
        "SELECT action, target FROM audit WHERE action = ? ORDER BY id", [action]
    ).fetchall()


@pytest.mark.slow
def test_a_recipient_suppressed_through_one_server_is_refused_by_the_other(pair: Pair) -> None:
    a, b = pair.a, pair.b
    res = pw(a, "suppression", "add", BOB, "--domain", "example.com", "--note", "asked to stop")
    assert res.returncode == 0, res.stderr
    # B lists it (from Redis); neither server's SQLite table holds it
    listed = json.loads(pw(b, "suppression", "list", "--json").stdout)
    assert [(e["address"], e["domain"], e["note"]) for e in listed] == [
        (BOB, "example.com", "asked to stop")
    ]
    for s in pair.both:
        rows = open_db(s.db_path, readonly=True).execute("SELECT COUNT(*) FROM suppressions")
        assert rows.fetchone() == (0,)

    # alice's message to bob and carol through B: bob refused at RCPT with why, carol delivered
    token = f"shared-supp-{uuid.uuid4().hex[:8]}"
    replies, code = send(b, [BOB, CAROL], token)
    assert replies[BOB][0] == 550, replies
    assert "suppressed for mail from example.com since" in replies[BOB][1]
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", replies[BOB][1])
    assert replies[CAROL][0] == 250 and code == 250
    assert b.sandbox.wait_for(lambda: sent(b, token), 30)
    qid = queue_id_of(sent(b, token)[0])
    assert b.sandbox.wait_for(lambda: delivered_to(b, qid) == {CAROL}, 15), delivered_to(b, qid)
    assert not sent(a, token)

    # removed on B: the next message to bob through A goes through
    res = pw(b, "suppression", "remove", BOB, "--domain", "example.com", "--note", "resubscribed")
    assert res.returncode == 0, res.stderr
    assert json.loads(pw(a, "suppression", "list", "--json").stdout) == []
    again = f"shared-unsupp-{uuid.uuid4().hex[:8]}"
    replies, code = send(a, [BOB], again)
    assert replies[BOB][0] == 250 and code == 250, replies
    assert a.sandbox.wait_for(lambda: sent(a, again), 30)
    qid = queue_id_of(sent(a, again)[0])
    assert a.sandbox.wait_for(lambda: delivered_to(a, qid) == {BOB}, 15)

    # each change audited where it was done
    assert [t for _, t in _audit(a, "suppression.add")] and not _audit(b, "suppression.add")
    assert [t for _, t in _audit(b, "suppression.remove")] and not _audit(a, "suppression.remove")


@pytest.mark.slow
def test_redis_down_at_rcpt_tempfails_never_a_silent_pass(pair: Pair) -> None:
    a = pair.a
    assert pw(a, "suppression", "add", BOB, "--domain", "example.com").returncode == 0
    try:
        pair.redis.stop()
        token = f"supp-down-{uuid.uuid4().hex[:8]}"
        replies, code = send(pair.b, [BOB, CAROL], token)
        # the look-up failed: the whole message gets [milter].on_error (tempfail) at
        # end-of-message, recorded as the milter's error; bob is never passed
        assert 400 <= code < 500, (replies, code)
        time.sleep(2)
        assert not sent(pair.b, token)

        def row() -> list[dict[str, object]]:
            return [r for r in pair.b.decisions() if r["subject"] == token]

        assert pair.b.sandbox.wait_for(row, 15)
        [r] = row()
        assert r["action"] == "tempfail" and "ConnectionError" in str(r["error"]), r
        assert [(x["check"], x["code"]) for x in r["reasons"]] == [("milter", "error")]  # type: ignore[union-attr]
        res = pw(a, "suppression", "list")
        assert res.returncode == 75 and "is unreachable" in res.stderr
    finally:
        pair.redis.start()
    # back: the suppression is still there (AOF) and refused again
    deadline = time.monotonic() + 10
    while True:
        replies, code = send(pair.b, [BOB], f"supp-back-{uuid.uuid4().hex[:8]}")
        if replies[BOB][0] == 550 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert replies[BOB][0] == 550, replies
    assert pw(a, "suppression", "remove", BOB).returncode == 0
