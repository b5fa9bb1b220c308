"""The decision log through a real Postfix: one byte cannot stop it (decisions.md, What is
recorded). What each input gets: a raw Latin-1 Subject inbound is passed and recorded; the same
outbound is refused (8-bit header without SMTPUTF8) and recorded; every message after them is
recorded too, and `postwarden log` shows the Latin-1 text readably."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import Stack

LATIN1 = b"Caf\xe9 cr\xe8me"


def _raw(from_: bytes, subject: bytes, to: bytes = b"bob@remote.test") -> bytes:
    return (
        b"From: " + from_ + b"\r\nTo: " + to + b"\r\nSubject: " + subject + b"\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject[:3] + b"@x.test>\r\n"
        b"\r\nhello\r\n"
    )


def test_a_latin1_subject_inbound_and_outbound_then_five_more_all_recorded(stack: Stack) -> None:
    sb = stack.sandbox
    sent = []
    inbound = sb.smtp_send(
        _raw(b"x@elsewhere.test", LATIN1), "x@elsewhere.test", ["alice@example.com"]
    )
    assert inbound.code == 250, inbound
    sent.append(inbound.queue_id)
    outbound = sb.smtp_send(
        _raw(b"alice@example.com", LATIN1),
        "alice@example.com",
        ["bob@remote.test"],
        login="alice@example.com",
    )
    assert outbound.code == 550 and "Subject" in outbound.text, outbound
    for i in range(5):
        r = sb.smtp_send(
            _raw(b"alice@example.com", f"ordinary {i}".encode()),
            "alice@example.com",
            ["bob@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250, r
        sent.append(r.queue_id)
    for qid in sent:
        assert stack.decision_for(qid)["queue_id"] == qid  # exactly one row each
    rows = [r for r in stack.decisions() if str(r["subject"]).startswith(("Café", "ordinary"))]
    assert len(rows) == 7, [r["subject"] for r in rows]
    assert [r["outbound"] for r in rows[:2]] == [False, True]
    assert [r["action"] for r in rows[:2]] == ["accept", "reject"]
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), "log", "--json"],
        capture_output=True,
        check=True,
    )
    logged = [r["subject"] for r in json.loads(out.stdout)]
    assert logged.count("Café crème") == 2
    text = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), "log"],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")  # valid UTF-8, whatever the message held
    assert all(qid in text for qid in sent)
    # The daemon's own log line for it is readable too.
    assert "\udce9" not in sb.milter_log.read_text(errors="surrogateescape")
