"""Feedback loops end to end through the private Postfix (feedback.md): a complaint about a
delivered copy suppresses the recipient at RCPT (SMTP) and at end-of-message (sendmail(1)),
for its From domain only; the sender is told once; the list is managed by hand."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.config import load_config
from tests.dkim_verify import opendkim_results, records_for, signature_tags
from tests.e2e.conftest import Stack, module_stack
from tests.helpers import message

ALICE = "alice@example.com"
BOB = "bob@remote.test"
CAROL = "carol@remote.test"
DAVE = "dave@remote.test"


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postfix"
FBL = "fbl@mail.sandbox.test"
# pipe(8) refuses root. The .deb's postwarden user is not always on a test machine (the deploy
# tests install and purge it), so the service runs as nobody, given what postwarden owns.
PIPE_USER = "nobody"


def install_feedback_pipe(stack: Stack) -> None:
    """deploy/postfix/master.cf.feedback and transport.feedback, as shipped, in the private
    Postfix. Only the program path and the user differ: this checkout's postwarden, run by the
    system python3 (a user other than root cannot enter /root's pyenv), as PIPE_USER."""
    sb = stack.sandbox
    repo = Path(__file__).resolve().parents[2]
    site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
    program = (
        f"/usr/bin/env PYTHONPATH={repo / 'src'}:{site} /usr/bin/python3 -m postwarden"
        f" --config {stack.config}"
    )
    service = [
        line.replace(
            "/usr/local/bin/postwarden --config /etc/postwarden/postwarden.toml", program
        ).replace("user=postwarden", f"user={PIPE_USER}")
        for line in (DEPLOY / "master.cf.feedback").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert service[0].split()[:8] == [
        "postwarden-feedback",
        "unix",
        "-",
        "n",
        "n",
        "-",
        "2",
        "pipe",
    ]
    with (sb.conf_dir / "master.cf").open("a") as fh:
        fh.write("\n".join(service) + "\n")
    maps = [
        line.replace("fbl@mail.example.net", FBL)
        for line in (DEPLOY / "transport.feedback").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    (sb.conf_dir / "transport").write_text("\n".join(maps) + "\n")
    subprocess.run(["postmap", str(sb.conf_dir / "transport")], check=True)
    subprocess.run(
        [
            "postconf",
            "-c",
            str(sb.conf_dir),
            "-e",
            f"transport_maps = hash:{sb.conf_dir / 'transport'}",
            "postwarden-feedback_destination_recipient_limit = 1",
        ],
        check=True,
    )


def hand_to_pipe_user(stack: Stack) -> None:
    """What the .deb's postwarden user owns in production: the database and the key files."""
    user = pwd.getpwnam(PIPE_USER)
    etc = stack.config.parent
    for path in [etc, *etc.glob("postwarden.db*"), *(etc / "policies").rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


@pytest.fixture(scope="module")
def fb_stack() -> Iterator[Stack]:
    for s in module_stack("feedback", "[feedback]\nfeedback_id = true\n"):
        s.allow_local("alice", [ALICE])  # sendmail(1) with -f alice@example.com is local:alice
        install_feedback_pipe(s)
        s.start()
        yield s


def pw(stack: Stack, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def sink_with(stack: Stack, token: str) -> list[bytes]:
    return [
        p.read_bytes()
        for p in sorted(stack.sandbox.sink_dir.iterdir())
        if p.is_file() and token.encode() in p.read_bytes()
    ]


def sent(stack: Stack, subject: str) -> list[bytes]:
    """Delivered copies of the message with this Subject (not a notice quoting it)."""
    return [
        m
        for m in sink_with(stack, subject)
        if f"Subject: {subject}\r\n".encode() in m or f"Subject: {subject}\n".encode() in m
    ]


def delivered_to(stack: Stack, queue_id: str) -> set[str]:
    """The recipients Postfix delivered (status=sent) for this queue id, from its log."""
    log = stack.sandbox.maillog.read_text(errors="replace")
    return set(re.findall(rf"{queue_id}: to=<([^>]+)>.*status=sent", log))


def queue_id_of(copy: bytes) -> str:
    m = re.search(rb"\(Postfix[^)]*\)\s+(?:with\s+\S+\s+)?id\s+([0-9A-Za-z]+)", copy)
    assert m, copy[:500]
    return m.group(1).decode()


def send(
    stack: Stack, rcpts: list[str], token: str, login: str = ALICE
) -> tuple[dict[str, tuple[int, str]], int]:
    """One SMTP transaction as `login`: each recipient's reply, and DATA's code."""
    replies: dict[str, tuple[int, str]] = {}
    with stack.sandbox.session(login=login) as s:
        code, _ = s.mail(login)
        assert code == 250
        for r in rcpts:
            c, text = s.rcpt(r)
            replies[r] = (c, text.decode(errors="replace"))
        data_code = 0
        if any(c == 250 for c, _ in replies.values()):
            data_code, _ = s.data(
                message(
                    from_=f"Sender <{login}>",
                    to=", ".join(rcpts),
                    subject=token,
                    extra=f"Message-ID: <{token}@{login.split('@')[1]}>\r\n",
                )
            )
    return replies, data_code


def arf_about(copy: bytes, rcpt: str, ftype: str = "abuse", drop_message_id: bool = False) -> bytes:
    """A provider's RFC 5965 report about a delivered copy (its headers, as pipe(8) hands it)."""
    head = copy.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    if drop_message_id:  # a provider that rewrote it: the queue id in Received must join it
        head = re.sub(rb"(?im)^message-id:.*\n?", b"", head)
    return (
        b"From: Provider FBL <fbl@provider.test>\n"
        b"To: fbl@mail.sandbox.test\n"
        b"Subject: complaint\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@provider.test>\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="xx"\n\n'
        b"--xx\nContent-Type: text/plain\n\nA user reported this as spam.\n"
        b"--xx\nContent-Type: message/feedback-report\n\n"
        b"Feedback-Type: " + ftype.encode() + b"\nUser-Agent: provider-fbl/1\nVersion: 1\n"
        b"Original-Rcpt-To: <" + rcpt.encode() + b">\n\n"
        b"--xx\nContent-Type: text/rfc822-headers\n\n" + head + b"\n\n--xx--\n"
    )


def test_a_complaint_suppresses_the_recipient_and_the_sender_is_told(fb_stack: Stack) -> None:
    sb = fb_stack.sandbox
    first = f"first-{uuid.uuid4().hex[:8]}"
    replies, code = send(fb_stack, [BOB], first)
    assert replies[BOB][0] == 250 and code == 250
    assert sb.wait_for(lambda: sent(fb_stack, first), 30)
    copy = sent(fb_stack, first)[0]
    qid = queue_id_of(copy)

    # The abuse report, on stdin as pipe(8) hands it.
    r = pw(fb_stack, "feedback", "ingest", stdin=arf_about(copy, BOB))
    assert r.returncode == 0, r.stderr
    assert b"suppressed" in r.stdout, r.stdout
    listed = json.loads(pw(fb_stack, "suppression", "list", "--json").stdout)
    assert [(e["address"], e["domain"]) for e in listed] == [(BOB, "example.com")]

    # SMTP: bob refused at RCPT with why and since when; carol delivered.
    second = f"second-{uuid.uuid4().hex[:8]}"
    replies, code = send(fb_stack, [BOB, CAROL], second)
    assert replies[BOB][0] == 550, replies
    assert "suppressed for mail from example.com since" in replies[BOB][1]
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", replies[BOB][1])
    assert replies[CAROL][0] == 250 and code == 250
    assert sb.wait_for(lambda: sent(fb_stack, second), 30)
    qid2 = queue_id_of(sent(fb_stack, second)[0])
    assert sb.wait_for(lambda: delivered_to(fb_stack, qid2) == {CAROL}, 15), delivered_to(
        fb_stack, qid2
    )

    # sendmail(1): decided at end-of-message, bob removed and named in the decision, and
    # alice told which recipient was removed.
    third = f"third-{uuid.uuid4().hex[:8]}"
    p = sb.sendmail(
        message(from_=f"Alice <{ALICE}>", to=f"{BOB}, {CAROL}", subject=third), ALICE, [BOB, CAROL]
    )
    assert p.returncode == 0, p.stderr
    sb.kick_pickup()
    assert sb.wait_for(lambda: sent(fb_stack, third), 60)
    qid3 = queue_id_of(sent(fb_stack, third)[0])
    assert sb.wait_for(lambda: delivered_to(fb_stack, qid3) == {CAROL}, 15), delivered_to(
        fb_stack, qid3
    )
    # sendmail(1) mail gets its Feedback-ID too (feedback_id = true in this stack).
    fid = re.findall(rb"(?im)^Feedback-ID:[ \t]*(.*)$", sent(fb_stack, third)[0])
    assert len(fid) == 1 and fid[0].startswith(b"transactional:") and b":example.com:" in fid[0]
    row = fb_stack.decision_for(qid3)
    reasons: list[dict[str, str]] = row["reasons"]  # type: ignore[assignment]
    removed = [x for x in reasons if f"{x['check']}.{x['code']}" == "suppression.removed"]
    assert removed and BOB in removed[0]["text"], reasons
    assert sb.wait_for(
        lambda: [
            m for m in sink_with(fb_stack, f"not delivered to <{BOB}>") if third.encode() in m
        ],
        60,
    ), "no notice of the removed recipient"

    # Another hosted domain's mail to bob goes (scope domain).
    other = f"other-{uuid.uuid4().hex[:8]}"
    replies, code = send(fb_stack, [BOB], other, login="news@example.net")
    assert replies[BOB][0] == 250 and code == 250, replies
    assert sb.wait_for(lambda: sent(fb_stack, other), 30)

    # Alice gets one complaint notice naming bob and the reported message.
    def notices() -> list[bytes]:
        return [
            m
            for m in sink_with(fb_stack, "reported your mail as spam")
            if f"To: {ALICE}".encode() in m
        ]

    sb.kick_pickup()
    assert sb.wait_for(lambda: notices(), 60), "no complaint notice reached the sink"
    notice = notices()
    assert len(notice) == 1
    assert BOB.encode() in notice[0] and f"<{first}@example.com>".encode() in notice[0]
    # ... passed as postwarden's own notice: never counted.
    nqid = queue_id_of(notice[0])
    assert any(x["code"] == "notice" for x in fb_stack.decision_for(nqid)["reasons"])  # type: ignore[union-attr]

    # The same report again (a pipe(8) retry) is stored once.
    again = pw(fb_stack, "feedback", "ingest", stdin=arf_about(copy, BOB))
    assert again.returncode == 0 and b"already stored" in again.stdout

    # The complaint rate: 1 complaint over the messages accepted for example.com (the notices,
    # with the null sender, not counted); above 0.1 %: flagged.
    stats = json.loads(
        pw(fb_stack, "feedback", "stats", "--json", "--domain", "example.com").stdout
    )
    w7 = stats[0]["7d"]
    assert (stats[0]["domain"], w7["complaints"]) == ("example.com", 1)
    assert w7["delivered"] >= 3 and w7["rate"] == round(1 / w7["delivered"], 6)
    assert stats[0]["30d"]["complaints"] == 1 and stats[0]["above_alert_rate"]
    text = pw(fb_stack, "feedback", "stats", "--no-alert").stdout.decode()
    assert "ALERT: example.com" in text

    # remove lets bob through; add stops dave.
    assert pw(fb_stack, "suppression", "remove", BOB, "--note", "asked back").returncode == 0
    back = f"back-{uuid.uuid4().hex[:8]}"
    replies, code = send(fb_stack, [BOB], back)
    assert replies[BOB][0] == 250 and code == 250
    assert pw(fb_stack, "suppression", "add", DAVE, "--domain", "example.com").returncode == 0
    replies, _ = send(fb_stack, [DAVE], f"dave-{uuid.uuid4().hex[:8]}")
    assert replies[DAVE][0] == 550 and "suppressed" in replies[DAVE][1]
    _ = qid


def test_a_not_spam_report_suppresses_nothing(fb_stack: Stack) -> None:
    token = f"ns-{uuid.uuid4().hex[:8]}"
    replies, code = send(fb_stack, [CAROL], token)
    assert code == 250
    assert fb_stack.sandbox.wait_for(lambda: sent(fb_stack, token), 30)
    copy = sent(fb_stack, token)[0]
    r = pw(fb_stack, "feedback", "ingest", stdin=arf_about(copy, CAROL, "not-spam"))
    assert r.returncode == 0, r.stderr
    listed = json.loads(pw(fb_stack, "suppression", "list", "--json").stdout)
    assert CAROL not in [e["address"] for e in listed]
    replies, code = send(fb_stack, [CAROL], f"ns2-{uuid.uuid4().hex[:8]}")
    assert replies[CAROL][0] == 250 and code == 250


def test_feedback_id_is_added_before_signing_and_verifies_under_opendkim(fb_stack: Stack) -> None:
    token = f"fid-{uuid.uuid4().hex[:8]}"
    # The sender's own Feedback-ID is replaced, never doubled.
    with fb_stack.sandbox.session(login=ALICE) as s:
        s.sendmail(
            ALICE,
            ["frank@remote.test"],
            message(
                from_=f"Alice <{ALICE}>",
                to="frank@remote.test",
                subject=token,
                extra="Feedback-ID: forged:x:y:z\r\n",
            ),
        )
    assert fb_stack.sandbox.wait_for(lambda: sent(fb_stack, token), 30)
    raw = sent(fb_stack, token)[0]
    values = re.findall(rb"(?im)^Feedback-ID:[ \t]*(.*)$", raw)
    assert len(values) == 1, values
    stream, tag, domain, host = values[0].decode().strip().split(":")
    assert (stream, domain, host) == ("transactional", "example.com", "mail.sandbox.test")
    assert re.fullmatch(r"[0-9a-f]{16}", tag) and "alice" not in tag
    tags = signature_tags(raw)
    assert len(tags) == 2
    for t in tags:
        signed = [h.strip().lower() for h in t["h"].split(":")]
        assert signed.count("feedback-id") == 1, t["h"]
    config = load_config(fb_stack.config)
    records = records_for([k for keys in config.keys.values() for k in keys])
    assert opendkim_results(raw, records) == ["pass", "pass"]


def test_a_report_mailed_to_the_fbl_address_goes_through_the_pipe_service(fb_stack: Stack) -> None:
    sb = fb_stack.sandbox
    token = f"pipe-{uuid.uuid4().hex[:8]}"
    grace = "grace@remote.test"
    replies, code = send(fb_stack, [grace], token)
    assert code == 250
    assert sb.wait_for(lambda: sent(fb_stack, token), 30)
    copy = sent(fb_stack, token)[0]
    hand_to_pipe_user(fb_stack)
    # The provider rewrote the Message-ID: Postfix's queue id in Received joins the report.
    report = arf_about(copy, grace, drop_message_id=True)
    with sb.session() as s:
        refused = s.sendmail("fbl-bounces@provider.test", [FBL], report)
    assert refused == {}

    def suppressed() -> list[dict[str, str]]:
        out = pw(fb_stack, "suppression", "list", "--json")
        return [e for e in json.loads(out.stdout or b"[]") if e["address"] == grace]

    assert sb.wait_for(suppressed, 60), sb.maillog.read_text(errors="replace")[-3000:]
    assert suppressed()[0]["domain"] == "example.com"
    log = sb.maillog.read_text(errors="replace")
    assert re.search(rf"to=<{FBL}>, relay=postwarden-feedback.*status=sent", log), log[-3000:]
    replies, _ = send(fb_stack, [grace], f"pipe2-{uuid.uuid4().hex[:8]}")
    assert replies[grace][0] == 550


def test_sendmail_mail_left_with_no_recipient_is_refused_and_returned(fb_stack: Stack) -> None:
    """dave is suppressed for example.com (the first test's `suppression add`)."""
    sb = fb_stack.sandbox
    token = f"none-{uuid.uuid4().hex[:8]}"
    p = sb.sendmail(message(from_=f"Alice <{ALICE}>", to=DAVE, subject=token), ALICE, [DAVE])
    assert p.returncode == 0, p.stderr
    sb.kick_pickup()

    def refused() -> list[dict[str, object]]:
        return [
            d
            for d in fb_stack.decisions(sender="local:alice")
            if d["subject"] == token and d["action"] == "reject"
        ]

    assert sb.wait_for(refused, 60)
    reasons = refused()[0]["reasons"]
    assert [f"{x['check']}.{x['code']}" for x in reasons][-1] == "suppression.all_suppressed"  # type: ignore[index]
    assert DAVE in reasons[-1]["text"]  # type: ignore[index]

    # Postfix returns it to the sender with the reason: nothing disappears untold.
    def bounce() -> list[bytes]:
        return [
            m
            for m in sink_with(fb_stack, token)
            if b"MAILER-DAEMON" in m and f"To: {ALICE}".encode() in m
        ]

    assert sb.wait_for(bounce, 60), "no bounce reached the sender"
    assert b"suppressed" in bounce()[0]
