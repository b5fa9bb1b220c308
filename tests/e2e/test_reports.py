"""Reports against a real private Postfix: messages sent through it and signed by postwarden for
example.com appear as postwarden's own count beside the count a DMARC report gives for this
server ([server].addresses = 127.0.0.1 in the demo config)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, module_stack
from tests.reportdata import R, aggregate_xml, as_email, as_zip

SENT = 6


@pytest.fixture(scope="module")
def reports_stack() -> Iterator[Stack]:
    for s in module_stack("reports"):
        s.start()
        yield s


def _postwarden(stack: Stack, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_own_signed_count_beside_the_reported_count(reports_stack: Stack) -> None:
    sb = reports_stack.sandbox
    started = int(time.time()) - 60
    queue_ids = []
    for n in range(SENT):
        r = sb.smtp_send(
            f"From: Alice <alice@example.com>\r\nTo: <bob@remote.test>\r\nSubject: report {n}\r\n"
            f"Message-ID: <rep-{n}@example.com>\r\n\r\nhello {n}\r\n".encode(),
            "alice@example.com",
            ["bob@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250, r
        queue_ids.append(r.queue_id)
    for qid in queue_ids:
        row = reports_stack.decision_for(qid)
        assert row["action"] == "accept" and row["signatures"], row
    # Inbound mail for example.com is not postwarden's own: never signed, never counted.
    r = sb.smtp_send(
        b"From: x@elsewhere.test\r\nSubject: in\r\n\r\nb\r\n", "x@elsewhere.test", ["a@example.com"]
    )
    assert r.code == 250
    ended = int(time.time()) + 60
    # A receiver's report of that window: this server sent SENT messages as example.com, and
    # someone else sent 4 that fail.
    xml = aggregate_xml(
        "google.com",
        "e2e-own-count",
        "example.com",
        started,
        ended,
        [R("127.0.0.1", SENT), R("203.0.113.66", 4, dkim="fail", spf="fail")],
    )
    # Through stdin, as the pipe service delivers it: a report email with a zip attached.
    mail = as_email(as_zip(xml), "google.com!example.com!1!2.zip")
    done = _postwarden(reports_stack, "reports", "ingest", stdin=mail)
    assert done.returncode == 0, done.stderr
    assert b"stored: DMARC aggregate report 'e2e-own-count'" in done.stdout
    shown = _postwarden(reports_stack, "reports", "--json", "--domain", "example.com")
    assert shown.returncode == 0, shown.stderr
    [d] = json.loads(shown.stdout)["domains"]
    assert d["own"]["reported"] == SENT
    assert d["own"]["signed"] == SENT
    assert datetime.fromisoformat(d["own"]["from"]) == datetime.fromtimestamp(started, UTC)
    assert d["groups"]["this_server"]["messages"] == SENT
    assert d["groups"]["failing"]["messages"] == 4
    text = _postwarden(reports_stack, "reports", "--domain", "example.com").stdout.decode()
    assert f"postwarden signed {SENT} message(s) for example.com" in text
    assert f"the reports cover {SENT} from this server" in text


def test_the_deploy_snippet_runs_reports_ingest() -> None:
    """The pipe service's argv is what the CLI takes (the e2e Postfix cannot run it as a user
    other than root, whose venv other users cannot read: checked here as a command line)."""
    snippet = Path(__file__).resolve().parents[2] / "deploy/postfix/master.cf.reports"
    lines = [line for line in snippet.read_text().splitlines() if not line.startswith("#")]
    assert lines[0].split()[:8] == ["postwarden-reports", "unix", "-", "n", "n", "-", "2", "pipe"]
    argv = lines[1].split("argv=", 1)[1].split()
    assert argv[1:] == ["--config", "/etc/postwarden/postwarden.toml", "reports", "ingest"]
    from postwarden.cli import build_parser

    args = build_parser().parse_args(argv[1:])
    assert args.reports_command == "ingest" and args.files == []
