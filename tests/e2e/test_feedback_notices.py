"""Complaint notices gathered over [feedback].notice_interval leave from the daemon once it has
passed, with no later report to carry them (feedback.md), through the private Postfix."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, module_stack
from tests.e2e.test_feedback import ALICE, arf_about, pw, send, sent, sink_with

INTERVAL = 20


@pytest.fixture(scope="module")
def notice_stack() -> Iterator[Stack]:
    for s in module_stack("feedback-notices", f'[feedback]\nnotice_interval = "{INTERVAL}s"\n'):
        s.start()
        yield s


def test_the_complaints_in_between_go_in_the_next_notice(notice_stack: Stack) -> None:
    sb = notice_stack.sandbox
    copies = {}
    for rcpt in ("bob@remote.test", "erin@remote.test"):
        token = f"n-{uuid.uuid4().hex[:8]}"
        _, code = send(notice_stack, [rcpt], token)
        assert code == 250
        assert sb.wait_for(lambda t=token: sent(notice_stack, t), 30)  # type: ignore[misc]
        copies[rcpt] = sent(notice_stack, token)[0]

    def notices() -> list[bytes]:
        return [
            m
            for m in sink_with(notice_stack, "reported your mail as spam")
            if f"To: {ALICE}".encode() in m
        ]

    started = time.monotonic()
    for rcpt, copy in copies.items():
        r = pw(notice_stack, "feedback", "ingest", stdin=arf_about(copy, rcpt))
        assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < INTERVAL, "the second report came too late to wait"
    sb.kick_pickup()
    assert sb.wait_for(lambda: len(notices()) >= 1, 60)
    first = notices()[0]
    assert b"bob@remote.test" in first and b"erin@remote.test" not in first

    # erin's complaint waited; the daemon mails it once the interval has passed.
    def two() -> bool:
        sb.kick_pickup()
        return len(notices()) == 2

    assert sb.wait_for(two, INTERVAL * 3 + 30, interval=1)
    second = next(m for m in notices() if m != first)
    assert b"erin@remote.test" in second and b"bob@remote.test" not in second
    assert time.monotonic() - started >= INTERVAL * 0.9
