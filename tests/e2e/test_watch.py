"""Mail to the admin without Prometheus (issue 20): the daemon's watch mails [rate].notify once
when the hold queue passes [metrics].notify_held_over, through the real Postfix."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator

import pytest

from postwarden.metrics import scrape_unix
from tests.e2e.conftest import Stack, module_stack, sink_with
from tests.helpers import message
from tests.unit.test_metrics import value


@pytest.fixture(scope="module")
def wstack() -> Iterator[Stack]:
    for s in module_stack("watch"):
        s.config.write_text(
            s.config.read_text()
            + f'\n[metrics]\nlisten = "unix:{s.root / "run" / "metrics.sock"}"\n'
            + "notify_held_over = 2\nwatch_seconds = 1\n"
        )
        s.start()
        yield s


def test_a_hold_queue_over_the_threshold_is_mailed_once(wstack: Stack) -> None:
    sb = wstack.sandbox
    for i in range(8):  # mallory's cap is 5/minute: 3 held
        r = sb.smtp_send(
            message(from_="mallory@example.com", subject=f"pills-{i}"),
            "mallory@example.com",
            ["victim@remote.test"],
            login="mallory@example.com",
        )
        assert r.code == 250
    subject = "postwarden: 3 messages held"

    def arrived() -> int:
        sb.kick_pickup()
        return len(sink_with(wstack, subject))

    # the watch looks every second; what postqueue says is cached up to 15 s
    assert sb.wait_for(lambda: arrived() == 1, 60)
    time.sleep(5)  # five more looks, still over the threshold: no second mail
    assert arrived() == 1
    mail = sink_with(wstack, subject)[0].decode()
    assert "To: postmaster@example.net" in mail
    assert "more than [metrics].notify_held_over = 2" in mail
    assert "By reason: 1 rate.exceeded, 2 rate.locked." in mail
    assert "postwarden quarantine list" in mail
    rows = [r for r in wstack.decisions() if str(r["subject"]) == subject]
    assert len(rows) == 1 and rows[0]["reasons"][0]["code"] == "notice"  # type: ignore[index]
    # the same daemon serves /metrics on a unix socket (mode 0660)
    sock = wstack.root / "run" / "metrics.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    text = scrape_unix(str(sock))
    assert value(text, "postwarden_decisions_total", action="quarantine") == 3
    assert value(text, "postwarden_notices_sent_total") == 2  # the lock notice and this one
