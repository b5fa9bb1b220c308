"""Streams end to end (streams.md): bulk mail leaves through the smtp-bulk transport (the
second sink, with the bulk HELO and source address), transactional mail through the default;
X-Postwarden-Stream, added outside the signature, is gone at both sinks and every signature
verifies; bulk mail from example.com (streams.bulk = "news.example.com") is refused naming
news.example.com, the same from news.example.com delivered."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.streams_stack import (
    BULK,
    BULK_BIND,
    BULK_HELO,
    BulkSink,
    helo_of,
    sink_files,
    streams_stack,
    verify_all,
)
from tests.helpers import message


@pytest.fixture(scope="module")
def st() -> Iterator[tuple[Stack, BulkSink]]:
    yield from streams_stack("streams")


def test_bulk_and_transactional_leave_through_their_own_transports(
    st: tuple[Stack, BulkSink],
) -> None:
    stack, bulk = st
    sb = stack.sandbox
    sent = {}
    for i in range(3):
        r = sb.smtp_send(
            message("News <news@news.example.com>", subject=f"bulk {i}", extra=BULK),
            "alice@example.com",
            [f"reader{i}@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250, r
        sent[r.queue_id] = "bulk"
        r = sb.smtp_send(
            message("Alice <alice@example.com>", subject=f"reset {i}"),
            "alice@example.com",
            [f"user{i}@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250, r
        sent[r.queue_id] = "transactional"
    # sendmail(1) too: a web form's newsletter and its password reset
    res = sb.sendmail(
        message("News <news@news.example.com>", subject="form bulk", extra=BULK),
        "news@news.example.com",
        ["f@remote.test"],
    )
    assert res.returncode == 0, res.stderr
    res = sb.sendmail(
        message("App <app@example.com>", subject="form reset"), "app@example.com", ["g@remote.test"]
    )
    assert res.returncode == 0, res.stderr
    sb.kick_pickup()
    assert sb.wait_for(lambda: len(bulk.files()) == 4 and len(sink_files(sb.sink_dir)) == 4, 60), (
        len(bulk.files()),
        len(sink_files(sb.sink_dir)),
        sb.maillog.read_text()[-3000:],
    )
    for path in bulk.files():
        raw = path.read_bytes()
        assert b"X-Postwarden-Stream" not in raw
        msg = message_from_bytes(raw)
        assert str(msg["Subject"]).startswith(("bulk", "form bulk"))
        assert helo_of(msg) == BULK_HELO
        assert str(msg["X-Client-Addr"]).strip() == BULK_BIND
        results = verify_all(stack, raw)
        assert results and all(results), (msg["Subject"], results)
    for path in sink_files(sb.sink_dir):
        raw = path.read_bytes()
        assert b"X-Postwarden-Stream" not in raw
        msg = message_from_bytes(raw)
        assert str(msg["Subject"]).startswith(("reset", "form reset"))
        assert helo_of(msg) == sb.myhostname
        results = verify_all(stack, raw)
        assert results and all(results), (msg["Subject"], results)
    # every decision says its stream (the rows waited for: the writer batches)
    want = {"bulk 0", "form bulk", "reset 0", "form reset"}
    assert sb.wait_for(
        lambda: want <= {str(d["subject"]) for d in stack.decisions() if d["outbound"]}, 15
    )
    rows = [d for d in stack.decisions() if d["outbound"]]
    by_subject = {str(d["subject"]): d["stream"] for d in rows}
    assert by_subject["bulk 0"] == "bulk" and by_subject["form bulk"] == "bulk"
    assert by_subject["reset 0"] == "transactional" and by_subject["form reset"] == "transactional"
    for qid, stream in sent.items():
        assert stack.decision_for(qid)["stream"] == stream


def test_bulk_from_the_main_domain_is_refused_naming_the_subdomain(
    st: tuple[Stack, BulkSink],
) -> None:
    stack, _ = st
    sb = stack.sandbox
    r = sb.smtp_send(
        message("Alice <alice@example.com>", subject="newsletter", extra=BULK),
        "alice@example.com",
        ["reader@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 550 and "news.example.com" in r.text, r
    r = sb.smtp_send(
        message("News <news@news.example.com>", subject="newsletter ok", extra=BULK),
        "alice@example.com",
        ["reader@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 250, r
    row = stack.decision_for(r.queue_id)
    assert row["action"] == "accept" and row["stream"] == "bulk"
