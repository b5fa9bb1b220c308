"""Reports against a real private Postfix: messages sent through it and signed by postwarden for
example.com appear as postwarden's own count beside the count a DMARC report gives for this
server ([server].addresses = 127.0.0.1 in the demo config); the pipe service of
deploy/postfix/master.cf.reports, run by that Postfix, stores what arrives at the rua address."""

from __future__ import annotations

import json
import os
import sqlite3
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


# ---- the pipe service of deploy/postfix/master.cf.reports, run by the private Postfix ----------

REPORTS_ADDRESS = "dmarc-reports@reports.sandbox.test"


def _service_from_snippet(argv: list[str]) -> str:
    """The snippet's service line, as `postconf -M` takes it, with our user and argv."""
    snippet = Path(__file__).resolve().parents[2] / "deploy/postfix/master.cf.reports"
    head, flags = [line for line in snippet.read_text().splitlines() if not line.startswith("#")]
    opts = [o for o in flags.split("argv=", 1)[0].split() if not o.startswith("user=")]
    return " ".join([*head.split(), *opts, "user=nobody", "argv=" + " ".join(argv)])


@pytest.fixture(scope="module")
def pipe_stack() -> Iterator[tuple[Stack, Path]]:
    """A stack whose Postfix delivers REPORTS_ADDRESS to the snippet's pipe service, which runs
    `postwarden reports ingest` as nobody into a database of its own. (The venv's python lives
    under /root, which nobody cannot read: the system's python 3.11 runs the same code.)"""
    for s in module_stack("reports-pipe"):
        pipe = s.root / "pipe"
        (pipe / "policies").mkdir(parents=True)
        (pipe / "policies" / "10.toml").write_text('[domains."example.com"]\n')
        (pipe / "postwarden.toml").write_text(
            'policies = "policies"\n[store]\ndatabase = "reports.db"\n'
            '[server]\naddresses = ["127.0.0.1"]\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
        )
        for p in [pipe, *pipe.rglob("*")]:
            os.chown(p, 65534, 65534)
        repo = Path(__file__).resolve().parents[2]
        site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
        argv = [
            "/usr/bin/env",
            f"PYTHONPATH={repo / 'src'}:{site}",
            "/usr/bin/python3",
            "-m",
            "postwarden",
            "--config",
            str(pipe / "postwarden.toml"),
            "reports",
            "ingest",
        ]
        m = ["postconf", "-c", str(s.sandbox.conf_dir)]
        subprocess.run(
            [*m, "-M", f"postwarden-reports/unix = {_service_from_snippet(argv)}"], check=True
        )
        subprocess.run(
            [
                *m,
                "-e",
                f"transport_maps = inline:{{ {{ {REPORTS_ADDRESS} = postwarden-reports: }} }}",
                "postwarden-reports_destination_recipient_limit = 1",
            ],
            check=True,
        )
        s.start()
        yield s, pipe


def _stored(pipe: Path) -> list[tuple[str, str]]:
    db = pipe / "reports.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT org_name, report_id FROM reports ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_postfix_delivers_a_report_email_to_the_pipe_service(
    pipe_stack: tuple[Stack, Path],
) -> None:
    stack, pipe = pipe_stack
    sb = stack.sandbox
    xml = aggregate_xml(
        "google.com", "via-pipe", "example.com", 1700000000, 1700086399, [R("127.0.0.1", 3)]
    )
    mail = as_email(as_zip(xml), "google.com!example.com!1700000000!1700086399.zip")
    r = sb.smtp_send(mail, "noreply-dmarc-support@google.example", [REPORTS_ADDRESS])
    assert r.code == 250, r
    assert sb.wait_for(lambda: _stored(pipe) == [("google.com", "via-pipe")], timeout=60), (
        sb.maillog.read_text()[-3000:]
    )
    # The same report again, and a message that is no report: both delivered (never bounced);
    # the duplicate is not stored twice, the other is stored as refused with its reason.
    for raw in (mail, b"From: someone@elsewhere.test\r\nSubject: hello\r\n\r\nnot a report\r\n"):
        r = sb.smtp_send(raw, "someone@elsewhere.test", [REPORTS_ADDRESS])
        assert r.code == 250, r

    def refused() -> list[str]:
        con = sqlite3.connect(f"file:{pipe / 'reports.db'}?mode=ro", uri=True)
        try:
            return [x[0] for x in con.execute("SELECT reason FROM report_refused").fetchall()]
        finally:
            con.close()

    assert sb.wait_for(lambda: len(refused()) == 1, timeout=60), sb.maillog.read_text()[-3000:]
    assert "no report" in refused()[0]
    assert sb.wait_for(
        lambda: sb.maillog.read_text().count("relay=postwarden-reports") >= 3, timeout=30
    )
    log = sb.maillog.read_text()
    assert log.count("status=sent (delivered via postwarden-reports service") == 3, log[-3000:]
    assert "(stdin: refused: an email with no report in it" in log  # the reason, in mail.log
    assert "bounced" not in log
    assert _stored(pipe) == [("google.com", "via-pipe")]


def test_a_busy_database_defers_the_report_and_postfix_retries(
    pipe_stack: tuple[Stack, Path],
) -> None:
    stack, pipe = pipe_stack
    sb = stack.sandbox
    if not _stored(pipe):  # run alone: let the pipe make its database first
        first = aggregate_xml("google.com", "first", "example.com", 1, 2, [R("127.0.0.1", 1)])
        sb.smtp_send(
            as_email(first, "r.xml", "text/xml"), "noreply@google.example", [REPORTS_ADDRESS]
        )
        assert sb.wait_for(lambda: bool(_stored(pipe)), timeout=60)
    xml = aggregate_xml(
        "google.com", "deferred", "example.com", 1700000000, 1700086399, [R("127.0.0.1", 1)]
    )
    holder = sqlite3.connect(pipe / "reports.db")
    holder.execute("BEGIN IMMEDIATE")  # the writer's lock, held past ingest's busy timeout
    try:
        r = sb.smtp_send(
            as_email(xml, "r.xml", "text/xml"), "noreply@google.example", [REPORTS_ADDRESS]
        )
        assert r.code == 250, r
        assert sb.wait_for(
            lambda: f"{r.queue_id}: to=<{REPORTS_ADDRESS}>" in sb.maillog.read_text(), timeout=60
        )
        line = next(x for x in sb.maillog.read_text().splitlines() if f"{r.queue_id}: to=<" in x)
        assert "status=deferred" in line and "retry later" in line, line
    finally:
        holder.rollback()
        holder.close()
    subprocess.run(["postqueue", "-c", str(sb.conf_dir), "-i", r.queue_id], check=True)
    assert sb.wait_for(lambda: ("google.com", "deferred") in _stored(pipe), timeout=60), (
        sb.maillog.read_text()[-2000:]
    )
