"""Warm-up end to end (streams.md): day 1 allows 5 recipients to the gmail group; of 8 messages
to gmail.com recipients 5 leave and 3 are held as warmup.paced; recipients of other providers
are unaffected; on the next schedule day (the test's clock: POSTWARDEN_TODAY, a test hook) the
releaser lets the 3 out, oldest first.

The test's day 1 is tomorrow (UTC), never a fixed date: a due time is never earlier than the real
now, so day 2's midnight must lie ahead of the real clock for as long as the test runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest

from postwarden.milter.clock import TODAY_ENV
from tests.e2e.conftest import Stack
from tests.e2e.streams_stack import BulkSink, sink_files, streams_stack
from tests.helpers import message

DAY1 = datetime.now(UTC).date() + timedelta(days=1)
DAY2 = DAY1 + timedelta(days=1)
WARMUP = f"""
[warmup."example.com"]
start = {DAY1.isoformat()}
daily = [5, 50]
providers = ["gmail"]
"""
DUE = f"{DAY2.isoformat()}T00:00:00+00:00"
DUE_Z = f"{DAY2.isoformat()}T00:00:00Z"


@pytest.fixture(scope="module")
def st() -> Iterator[tuple[Stack, BulkSink]]:
    old = os.environ.get(TODAY_ENV)
    os.environ[TODAY_ENV] = DAY1.isoformat()
    try:
        yield from streams_stack("warmup", WARMUP)
    finally:
        if old is None:
            os.environ.pop(TODAY_ENV, None)
        else:
            os.environ[TODAY_ENV] = old


def cli(stack: Stack, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def delivered(stack: Stack) -> list[str]:
    return [
        str(message_from_bytes(p.read_bytes())["Subject"])
        for p in sink_files(stack.sandbox.sink_dir)
    ]


def test_day_one_allows_five_to_gmail_and_the_rest_leave_the_next_day(
    st: tuple[Stack, BulkSink],
) -> None:
    stack, _ = st
    sb = stack.sandbox
    queue_ids = []
    for i in range(8):
        r = sb.smtp_send(
            message("Alice <alice@example.com>", to=f"u{i}@gmail.com", subject=f"gmail {i}"),
            "alice@example.com",
            [f"u{i}@gmail.com"],
            login="alice@example.com",
        )
        assert r.code == 250, r
        queue_ids.append(r.queue_id)
    for i, rcpt in enumerate(["x@outlook.com", "y@yahoo.com", "z@remote.test"]):
        r = sb.smtp_send(
            message("Alice <alice@example.com>", to=rcpt, subject=f"other {i}"),
            "alice@example.com",
            [rcpt],
            login="alice@example.com",
        )
        assert r.code == 250, r
    assert sb.wait_for(lambda: len(delivered(stack)) >= 8, 30)
    rows = [stack.decision_for(q) for q in queue_ids]
    assert [r["action"] for r in rows] == ["accept"] * 5 + ["quarantine"] * 3
    for r in rows[5:]:
        assert [x["check"] + "." + x["code"] for x in r["reasons"]] == ["warmup.paced"]  # type: ignore[index, union-attr]
    sb.wait_for(lambda: False, 3)  # the releaser has had rounds: day 1 has no room left
    got = delivered(stack)
    assert sorted(got) == sorted(
        [f"gmail {i}" for i in range(5)] + [f"other {i}" for i in range(3)]
    )
    held = {q["queue_id"] for q in sb.queue() if q.get("queue_name") == "hold"}
    assert held == set(queue_ids[5:])

    # quarantine list and senders say what waits and when it is due: day 2, 00:00 UTC.
    listed = json.loads(cli(stack, "quarantine", "list", "--json"))["messages"]
    assert [(m["queue_id"], m["paced"], m["due"]) for m in listed] == [
        (q, "warmup", DUE) for q in queue_ids[5:]
    ]
    text = cli(stack, "quarantine", "list")
    assert text.count(f"due {DUE_Z}") == 3
    senders = {s["identity"]: s for s in json.loads(cli(stack, "senders", "--json"))}
    alice = senders["sasl:alice@example.com"]
    assert (alice["paced"], alice["next_due"]) == (3, DUE)
    assert f"3 paced, next due {DUE_Z}" in cli(stack, "senders")

    # The next schedule day: the daemon restarted on the test's clock lets the 3 go.
    sb.stop_milter()
    os.environ[TODAY_ENV] = DAY2.isoformat()
    sb.start_milter(stack.config)
    assert sb.wait_for(lambda: len(delivered(stack)) >= 11, 60), sb.milter_log.read_text()[-2000:]
    got = delivered(stack)
    assert sorted(got) == sorted(
        [f"gmail {i}" for i in range(8)] + [f"other {i}" for i in range(3)]
    )
    assert not [q for q in sb.queue() if q.get("queue_name") == "hold"]
