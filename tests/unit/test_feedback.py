"""Feedback-loop reports (feedback.md): the real corpus, the shapes providers send, hostile
input, storing once, joining to postwarden's decision, suppression and notices."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postwarden.config import load_config
from postwarden.config.models import Policy
from postwarden.feedback import arf, suppression
from postwarden.feedback.ingest import ingest
from postwarden.feedback.stats import alerts, rates
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.checks.suppression import rcpt_text
from postwarden.policy.hygiene import sender_tag
from postwarden.policy.model import HeaderEdit, NotifySender, RemoveRcpt, Suppression
from postwarden.store import feedback as store
from postwarden.store import migrate, open_db
from tests.helpers import BASIC_POLICY, SHARED, write_config

CORPUS = SHARED / "corpora" / "arf-feedback"

# What is read from each report: (type, complained recipient, reported Message-ID).
EXPECTED = {
    "flanker-complaints/aol.eml": (
        "abuse",
        "",  # AOL redacts the recipient
        "<20101117174130.28884.55421@luna>",
    ),
    "flanker-complaints/yahoo.eml": (
        "abuse",
        "user@yahoo.com",
        "<20120711015015.4A8BE2E088E@www.example.com>",
    ),
    "mail-auth-arf/001.eml": ("abuse", "", "8787KJKJ3K4J3K4J3K4J3.mail@example.net"),
    # 002's reported message has a blank line inside its header: what follows is body.
    "mail-auth-arf/002.eml": ("abuse", "user@example.com", ""),
    "mail-auth-arf/003.eml": ("auth-failure", "user@example.com", ""),
    "mail-auth-arf/004.eml": ("auth-failure", "address@myotherdomain.name", ""),
    "mail-auth-arf/005.eml": (
        "auth-failure",
        "someuser@receiver.example",
        "<87913910.1318094604546@out.sender.example>",
    ),
}


def corpus_files() -> list[Path]:
    assert CORPUS.is_dir(), f"{CORPUS} is missing: the corpus is part of the test"
    files = sorted(CORPUS.rglob("*.eml"))
    assert len(files) == 7, [str(f) for f in files]
    return files


def _type_of(mail_auth: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"-\1", mail_auth).lower()


def test_every_report_in_the_corpus_is_read_as_expected() -> None:
    files = corpus_files()
    compared = 0
    for path in files:
        rel = str(path.relative_to(CORPUS))
        rep = arf.parse(path.read_bytes())
        assert rep.problem == "", (rel, rep.problem)
        assert (rep.feedback_type, rep.recipient, rep.message_id) == EXPECTED[rel], rel
        expected_json = path.with_suffix(".json")
        if expected_json.exists():
            want = json.loads(expected_json.read_text())
            assert rep.feedback_type == _type_of(want["feedback_type"]), rel
            assert rep.original_rcpt_to == (want["original_rcpt_to"] or "").strip("<>").lower()
            assert rep.original_mail_from == (want["original_mail_from"] or "").strip("<>").lower()
            assert rep.user_agent == (want["user_agent"] or "")
            if want["headers"]:
                m = re.search(r"^Message-ID:\s*(\S+)", want["headers"], re.M | re.I)
                assert rep.message_id == (m.group(1) if m else ""), rel
            compared += 1
    assert compared == 5


def _arf(
    ftype: str = "abuse", rcpt: str = "bob@remote.test", msgid: str = "<m1@example.com>"
) -> bytes:
    return (
        "From: fbl@provider.test\r\nTo: fbl@mail.example.net\r\nSubject: report\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        "--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {ftype}\r\nUser-Agent: test/1\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: <{rcpt}>\r\n\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        "Received: from client (localhost [127.0.0.1])\r\n\tby mail.example.net (Postfix)"
        " with ESMTPA id 4XyZQ1abcD\r\n\tfor <bob@remote.test>; Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"From: Alice <alice@example.com>\r\nTo: {rcpt}\r\nSubject: Hi\r\n"
        f"Message-ID: {msgid}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nhello\r\n"
        "--b1--\r\n"
    ).encode()


def test_the_shapes_providers_send() -> None:
    plain = _arf()
    for data in (plain, plain.replace(b"\r\n", b"\n"), plain.replace(b"\r\n", b"\r")):
        rep = arf.parse(data)
        assert (rep.feedback_type, rep.recipient, rep.message_id) == (
            "abuse",
            "bob@remote.test",
            "<m1@example.com>",
        )
        assert rep.queue_ids == ["4XyZQ1abcD"]
    misspelt = arf.parse(plain.replace(b"message/feedback-report", b"message/feedback_report"))
    assert misspelt.feedback_type == "abuse" and misspelt.shape == "arf"
    nested = (
        b'From: x@provider.test\nContent-Type: multipart/mixed; boundary="outer"\n\n'
        b"--outer\nContent-Type: text/plain\n\nsee attached\n--outer\n"
        + plain.replace(b"\r\n", b"\n").split(b"Subject: report\n", 1)[1]
        + b"\n--outer--\n"
    )
    rep = arf.parse(nested)
    assert (rep.shape, rep.recipient, rep.message_id) == (
        "nested",
        "bob@remote.test",
        "<m1@example.com>",
    )
    forwarded = (
        b'From: user@provider.test\nContent-Type: multipart/mixed; boundary="f"\n\n'
        b"--f\nContent-Type: text/plain\n\nspam!\n--f\nContent-Type: message/rfc822\n\n"
        b"From: alice@example.com\nTo: carol@remote.test\nMessage-ID: <m2@example.com>\n\nhi\n--f--\n"
    )
    rep = arf.parse(forwarded)
    assert (rep.shape, rep.feedback_type, rep.recipient, rep.message_id) == (
        "forwarded",
        "abuse",
        "carol@remote.test",
        "<m2@example.com>",
    )
    bare = arf.parse(
        b"From: user@provider.test\nContent-Type: message/rfc822\n\n"
        b"From: alice@example.com\nTo: carol@remote.test\nMessage-ID: <m3@example.com>\n\nhi\n"
    )
    assert (bare.shape, bare.recipient, bare.message_id) == (
        "forwarded",
        "carol@remote.test",
        "<m3@example.com>",
    )
    assert arf.parse(b"\x00\xff garbage \x89PNG").problem


def _hostile() -> dict[str, bytes]:
    nested = b"From: a@b.test\n"
    for i in range(200):
        nested += f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'.encode()
    return {
        "5 MB": _arf().replace(b"hello", b"x" * (5 * 1024 * 1024)),
        "200 nested multiparts": nested + b"\n",
        "100 KB header line": b"Subject: " + b"A" * (100 * 1024) + b"\n" + _arf(),
        "binary garbage": bytes(range(256)) * 4096,
    }


@pytest.mark.parametrize("name", list(_hostile()))
def test_hostile_reports_end_within_seconds(name: str) -> None:
    started = time.monotonic()
    rep = arf.parse(_hostile()[name])
    assert time.monotonic() - started < 3, name
    assert isinstance(rep.problem, str)


def _cfg(tmp_path: Path, extra: str = "") -> tuple[object, object]:
    cfg = load_config(write_config(tmp_path, BASIC_POLICY + extra))
    db = open_db(cfg.daemon.store.database)
    migrate(db)
    return cfg, db


def _decision(db: object, **kw: object) -> None:
    row = {
        "time": datetime.now(UTC).isoformat(),
        "queue_id": "4XyZQ1abcD",
        "identity": "sasl:alice@example.com",
        "mail_from": "alice@example.com",
        "rcpts": '["bob@remote.test"]',
        "header_from": "Alice <alice@example.com>",
        "subject": "Hi",
        "message_id": "<m1@example.com>",
        "outbound": 1,
        "action": "accept",
        **kw,
    }
    db.table("decisions").insert(row)  # type: ignore[attr-defined]


THREE = '["bob@remote.test", "dave@remote.test", "erin@remote.test"]'


def test_ingest_joins_suppresses_once_and_notices_once_per_interval(tmp_path: Path) -> None:
    cfg, db = _cfg(tmp_path)
    # The reported copy's Message-ID was rewritten by the provider: the queue id joins it.
    _decision(db, rcpts=THREE)
    sent: list[tuple[list[str], str, str]] = []

    def send(rcpts: list[str], subject: str, body: str) -> None:
        sent.append((rcpts, subject, body))

    now = datetime.now(UTC)
    out = ingest(db, cfg, _arf(msgid="<rewritten@provider>"), now=now, send=send)  # type: ignore[arg-type]
    assert (out.status, out.from_domain, out.suppressed) == ("stored", "example.com", True)
    row = store.reports(db)[0]  # type: ignore[arg-type]
    assert (row["identity"], row["queue_id"], row["notice_to"]) == (
        "sasl:alice@example.com",
        "4XyZQ1abcD",
        "alice@example.com",
    )
    again = ingest(db, cfg, _arf(msgid="<rewritten@provider>"), now=now, send=send)  # type: ignore[arg-type]
    assert again.status == "duplicate"
    assert len(sent) == 1 and sent[0][0] == ["alice@example.com"]
    assert "bob@remote.test" in sent[0][2] and "<rewritten@provider>" in sent[0][2]
    # A second complaint within the interval waits; after it, both... the waiting one goes.
    ingest(db, cfg, _arf(rcpt="dave@remote.test"), now=now + timedelta(minutes=5), send=send)  # type: ignore[arg-type]
    assert len(sent) == 1
    ingest(db, cfg, _arf(rcpt="erin@remote.test"), now=now + timedelta(hours=2), send=send)  # type: ignore[arg-type]
    assert len(sent) == 2
    assert "dave@remote.test" in sent[1][2] and "erin@remote.test" in sent[1][2]
    entries = {(e["address"], e["domain"]) for e in suppression.entries(db)}  # type: ignore[arg-type]
    assert entries == {
        ("bob@remote.test", "example.com"),
        ("dave@remote.test", "example.com"),
        ("erin@remote.test", "example.com"),
    }
    stats = rates(db, cfg, now + timedelta(hours=3), "example.com")  # type: ignore[arg-type]
    assert stats[0]["7d"] == {"complaints": 3, "delivered": 1, "rate": 3.0}


def test_a_report_suppresses_only_a_recipient_postwarden_really_sent_that_message(
    tmp_path: Path,
) -> None:
    cfg, db = _cfg(tmp_path)
    # Forged: no message of ours has this Message-ID or queue id.
    forged = _arf(msgid="<never-sent@example.com>").replace(b"4XyZQ1abcD", b"4NotOurs01")
    out = ingest(db, cfg, forged, send=lambda *a: None)  # type: ignore[arg-type]
    assert out.status == "stored" and not out.suppressed and "not joined" in out.reason
    _decision(db)
    # Joined, but the complained address never got it.
    out = ingest(db, cfg, _arf(rcpt="victim@remote.test"), send=lambda *a: None)  # type: ignore[arg-type]
    assert not out.suppressed and "not a recipient" in out.reason
    assert suppression.entries(db) == []  # type: ignore[arg-type]
    # Redacted (AOL): the decision's one recipient is the one who complained.
    redacted = _arf(rcpt="redacted@aol.com").replace(
        b"Original-Rcpt-To: <redacted@aol.com>\r\n", b""
    )
    out = ingest(db, cfg, redacted, send=lambda *a: None)  # type: ignore[arg-type]
    assert out.suppressed and out.recipient == "bob@remote.test"


def test_the_domain_contact_hears_of_its_complaints(tmp_path: Path) -> None:
    cfg, db = _cfg(tmp_path)
    cfg = load_config(
        write_config(
            tmp_path,
            BASIC_POLICY.replace(
                '[domains."example.com"]\n',
                '[domains."example.com"]\ncontact = "abuse-desk@example.com"\n',
            ),
        )
    )
    _decision(db)
    sent: list[list[str]] = []
    ingest(db, cfg, _arf(), send=lambda r, s, b: sent.append(r))  # type: ignore[arg-type]
    assert sent == [["abuse-desk@example.com"]]


def test_not_spam_suppresses_nothing_and_server_scope(tmp_path: Path) -> None:
    cfg, db = _cfg(tmp_path, '\n[feedback]\nscope = "server"\n')
    _decision(db)
    out = ingest(db, cfg, _arf("not-spam"))  # type: ignore[arg-type]
    assert out.status == "stored" and not out.suppressed
    assert suppression.entries(db) == []  # type: ignore[arg-type]
    out = ingest(db, cfg, _arf("abuse"))  # type: ignore[arg-type]
    assert [(e["address"], e["domain"]) for e in suppression.entries(db)] == [  # type: ignore[arg-type]
        ("bob@remote.test", "")
    ]


def _pw(cfg: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(cfg), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_the_cli_ingests_every_corpus_file_and_hostile_input(tmp_path: Path) -> None:
    # No Postfix here: the notices fail (logged, the reports stored) and touch no system queue.
    cfg = write_config(
        tmp_path, daemon_extra=f'[postfix]\nconfig_directory = "{tmp_path / "no-postfix"}"\n'
    )
    files = [str(f) for f in corpus_files()]
    r = _pw(cfg, "feedback", "ingest", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"stored:") == 7, r.stdout
    for name, data in _hostile().items():
        started = time.monotonic()
        r = _pw(cfg, "feedback", "ingest", stdin=data)
        assert r.returncode in (0, 75), (name, r.stderr)
        assert time.monotonic() - started < 20, name
    r = _pw(
        cfg, "suppression", "add", "dave@remote.test", "--domain", "example.com", "--note", "asked"
    )
    assert r.returncode == 0, r.stderr
    # The corpus's complaints (about example.com / example.net mail, hosted here) and the 5 MB
    # and long-header ones are about no message postwarden sent: they suppress nobody.
    listed = json.loads(_pw(cfg, "suppression", "list", "--json").stdout)
    assert {(e["address"], e["domain"], e["note"]) for e in listed} == {
        ("dave@remote.test", "example.com", "asked"),
    }
    assert _pw(cfg, "suppression", "remove", "dave@remote.test").returncode == 0
    listed = json.loads(_pw(cfg, "suppression", "list", "--json").stdout)
    assert "dave@remote.test" not in [e["address"] for e in listed]
    assert _pw(cfg, "suppression", "add", "not an address").returncode == 2
    db = open_db(tmp_path / "postwarden.db", readonly=True)
    audited = [r[0] for r in db.execute("SELECT action FROM audit ORDER BY id").fetchall()]
    assert audited == ["suppression.add", "suppression.remove"]
    stats = json.loads(_pw(cfg, "feedback", "stats", "--json", "--no-alert").stdout)
    assert {r["domain"] for r in stats} >= {"example.com", "example.net"}
    assert set(stats[0]["7d"]) == {"complaints", "delivered", "rate"}


# ---- the suppression check and Feedback-ID: the pure engine ------------------------------------

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _facts(rcpts: tuple[str, ...], suppressed: tuple[Suppression, ...], **kw: object) -> Facts:
    base: dict[str, object] = {
        "auth_login": "alice@example.com",
        "mail_from": "alice@example.com",
        "rcpts": rcpts,
        "headers": (
            ("From", "Alice <alice@example.com>"),
            ("Date", "Mon, 23 Nov 2026 10:00:00 +0000"),
            ("Message-ID", "<x@example.com>"),
            ("Subject", "hi"),
        ),
        "suppressed": suppressed,
        "hostname": "mail.example.net",
        "tag_key": "k",
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


BOB_COM = Suppression("bob@remote.test", "example.com", "2026-11-22T09:00:00+00:00", "abuse report")


def test_the_check_removes_only_recipients_suppressed_for_the_from_domain() -> None:
    policy = load_policy()
    v = evaluate(_facts(("Bob@remote.test", "carol@remote.test"), (BOB_COM,)), policy, NOW)
    assert v.action == Action.ACCEPT
    assert v.of(RemoveRcpt) == [RemoveRcpt("Bob@remote.test")]
    reason = next(r for r in v.reasons if r.check == "suppression")
    assert reason.code == "removed" and "bob@remote.test" in reason.text
    assert "since 2026-11-22 09:00:00 UTC" in reason.text
    notice = v.of(NotifySender)
    assert len(notice) == 1 and notice[0].to == "alice@example.com"
    # Another From domain: the entry does not apply; a server-wide one does.
    other = _facts(
        ("bob@remote.test", "carol@remote.test"),
        (BOB_COM,),
        auth_login="news@example.net",
        mail_from="news@example.net",
        headers=(("From", "news@example.net"), ("Date", "x"), ("Message-ID", "<y@example.net>")),
    )
    assert evaluate(other, policy, NOW).of(RemoveRcpt) == []
    server = replace(BOB_COM, domain="")
    assert evaluate(replace(other, suppressed=(server,)), policy, NOW).of(RemoveRcpt) == [
        RemoveRcpt("bob@remote.test")
    ]
    # Every recipient suppressed: refused, naming them.
    v = evaluate(_facts(("bob@remote.test",), (BOB_COM,)), policy, NOW)
    assert v.action == Action.REJECT and v.of(RemoveRcpt) == []
    assert "bob@remote.test" in v.reasons[-1].text
    assert rcpt_text(BOB_COM).startswith(
        "<bob@remote.test> is suppressed for mail from example.com"
    )


def load_policy(extra: str = "") -> Policy:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_config(write_config(Path(tmp), BASIC_POLICY + extra)).policy


def test_feedback_id_is_planned_before_signing_with_a_stable_opaque_tag() -> None:
    policy = load_policy("\n[feedback]\nfeedback_id = true\n")
    f = _facts(
        ("carol@remote.test",), (), headers=(*_facts((), ()).headers, ("Feedback-ID", "a:b:c:d"))
    )
    v = evaluate(f, policy, NOW)
    edits = [e for e in v.edits if e.name == "Feedback-ID"]
    assert edits[0] == HeaderEdit("remove", "Feedback-ID", 1)
    value = edits[1].value
    stream, tag, domain, host = value.split(":")
    assert (stream, domain, host) == ("transactional", "example.com", "mail.example.net")
    assert tag == sender_tag("sasl:alice@example.com", "k") and len(tag) == 16
    assert tag != sender_tag("sasl:alice@example.com", "other key")
    bulk_headers = (
        ("Precedence", "bulk"),
        ("List-Unsubscribe", "<https://example.com/u>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    bulk = evaluate(replace(f, headers=(*f.headers, *bulk_headers)), policy, NOW)
    added = next(e.value for e in bulk.edits if e.op == "add" and e.name == "Feedback-ID")
    assert added.startswith("bulk:")
    assert not [e for e in evaluate(f, load_policy(), NOW).edits if e.name == "Feedback-ID"]


def test_the_rcpt_look_up_is_one_index_probe(tmp_path: Path) -> None:
    cfg, db = _cfg(tmp_path)
    plan = db.execute(  # type: ignore[attr-defined]
        "EXPLAIN QUERY PLAN SELECT address, domain, created_at, reason FROM suppressions"
        " WHERE address = ? AND removed_at IS NULL",
        ["bob@remote.test"],
    ).fetchall()
    assert "idx_suppressions_active" in str(plan), plan
    store.suppress(db, "bob@remote.test", "example.com", NOW.isoformat(), "admin", "x")  # type: ignore[arg-type]
    lookup = store.SuppressionLookup(cfg.daemon.store.database)  # type: ignore[attr-defined]
    assert lookup.at_rcpt("BOB@remote.test", "example.com") is not None
    assert lookup.at_rcpt("bob@remote.test", "example.net") is None


def test_an_alert_goes_to_rate_notify_once_a_day(tmp_path: Path) -> None:
    cfg, db = _cfg(tmp_path, '\n[rate]\nnotify = ["postmaster@example.net"]\n')
    _decision(db)
    mailed: list[tuple[list[str], str, str]] = []

    def send(rcpts: list[str], subject: str, body: str) -> None:
        mailed.append((rcpts, subject, body))

    now = datetime.now(UTC)
    # The complaint lifts example.com to 1 over 1: the sender is told, and so is [rate].notify.
    ingest(db, cfg, _arf(), now=now, send=send)  # type: ignore[arg-type]
    assert [m[0] for m in mailed] == [["alice@example.com"], ["postmaster@example.net"]]
    assert "example.com complaint rate 100.000%" in mailed[1][1]
    rows = rates(db, cfg, now)  # type: ignore[arg-type]
    assert rows[0]["above_alert_rate"]
    assert alerts(db, cfg, rows, now + timedelta(hours=1), send) == []  # type: ignore[arg-type]
    later = now + timedelta(days=1, minutes=1)
    assert alerts(db, cfg, rows, later, send) == ["example.com"]  # type: ignore[arg-type]


def test_the_daemons_flusher_sends_what_waited_once_the_interval_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwarden.feedback import ingest as ingest_module

    cfg, db = _cfg(tmp_path, '\n[feedback]\nnotice_interval = "15m"\n')
    _decision(db, rcpts=THREE)
    sent: list[str] = []

    def send(rcpts: list[str], subject: str, body: str) -> None:
        sent.append(body)

    now = datetime.now(UTC)
    ingest(db, cfg, _arf(), now=now, send=send)  # type: ignore[arg-type]
    ingest(db, cfg, _arf(rcpt="dave@remote.test"), now=now, send=send)  # type: ignore[arg-type]
    assert len(sent) == 1  # dave's waits for the interval
    monkeypatch.setattr(ingest_module, "notice_sender", lambda db, config: send)
    flusher = ingest_module.NoticeFlusher(lambda: cfg)  # type: ignore[arg-type,return-value]
    assert flusher.wait_s() == 60
    assert flusher.flush_once(now + timedelta(minutes=5)) == 0
    assert flusher.flush_once(now + timedelta(minutes=16)) == 1
    assert "dave@remote.test" in sent[1] and "bob@remote.test" not in sent[1]
    assert flusher.flush_once(now + timedelta(hours=2)) == 0  # nothing left
