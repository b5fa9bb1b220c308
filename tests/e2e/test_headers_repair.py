"""Issue 14 through the private Postfix: headers repaired instead of refused, every shown header
sealed, Sender and Resent-From held to From's rules, the client's trace stripped. Every
delivered message is verified after delivery by dkimpy and by OpenDKIM (`opendkim -t`)."""

from __future__ import annotations

import email.header
import email.utils
import subprocess
import uuid
from collections.abc import Iterator
from email import message_from_bytes

import pytest

from postwarden.config import load_config
from postwarden.tui.screens import decision_detail
from tests.dkim_verify import dkimpy_results, opendkim_results, records_for, signature_tags
from tests.e2e.conftest import Stack, module_stack

EXTRA_POLICY = """
[users."alice@example.com"]
send_as = ["{login}", "news@example.com"]

[headers]
strip_client_received = true
"""
# The README's recipe for the Received line Postfix itself adds on submission.
HEADER_CHECKS = r"/^Received: .*\(Postfix\) with ESMTPS?A/ IGNORE" + "\n"
KEYS = 2  # example.com signs with RSA and Ed25519


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for s in module_stack("headers", EXTRA_POLICY):
        sb = s.sandbox
        checks = sb.conf_dir / "submission_header_checks"
        checks.write_text(HEADER_CHECKS)
        m = ["postconf", "-c", str(sb.conf_dir)]
        for cmd in (
            [*m, "-M", "subcleanup/unix = subcleanup unix n - n - 0 cleanup"],
            [*m, "-P", f"subcleanup/unix/header_checks = regexp:{checks}"],
            [*m, "-P", f"127.0.0.1:{sb.smtp_port}/inet/cleanup_service_name = subcleanup"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        s.start()
        yield s


def records(stack: Stack) -> dict[str, str]:
    config = load_config(stack.config)
    return records_for([k for keys in config.keys.values() for k in keys])


def send(
    stack: Stack, raw: bytes, login: str = "alice@example.com", sender: str = ""
) -> tuple[int, str, str]:
    """Send raw bytes as they are (no SMTPUTF8): (code, text, queue id)."""
    r = stack.sandbox.smtp_send(
        raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
        sender or login,
        ["x@remote.test"],
        login=login,
    )
    return r.code, r.text, r.queue_id if r.code == 250 else ""


def arrived(stack: Stack, token: str) -> bytes:
    sb = stack.sandbox
    assert sb.wait_for(
        lambda: any(token.encode() in p.read_bytes() for p in sb.sink_dir.iterdir()), 30
    ), f"{token} did not arrive"
    return next(p.read_bytes() for p in sb.sink_dir.iterdir() if token.encode() in p.read_bytes())


def verified(stack: Stack, raw: bytes) -> tuple[list[bool], list[str]]:
    recs = records(stack)
    return dkimpy_results(raw, recs), opendkim_results(raw, recs)


def assert_verifies(stack: Stack, raw: bytes) -> None:
    dkimpy, opendkim = verified(stack, raw)
    assert dkimpy == [True] * KEYS and opendkim == ["pass"] * KEYS, (dkimpy, opendkim)


def message(
    token: str, *, frm: str = "alice@example.com", extra: str = "", to: str = "x@remote.test"
) -> bytes:
    return (
        f"From: {frm}\nTo: {to}\nSubject: {token}\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.com>\n{extra}\nhello\n"
    ).encode()


def decoded(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def reason_keys(row: dict[str, object]) -> list[str]:
    return [f"{r['check']}.{r['code']}" for r in row["reasons"]]  # type: ignore[attr-defined]


def header_lines(raw: bytes) -> list[bytes]:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.split(b"\n")


def test_raw_utf8_subject_and_display_name_arrive_encoded_reading_the_same(stack: Stack) -> None:
    raw = (
        "From: Ren\u00e9e Dupr\u00e9 <alice@example.com>\nTo: J\u00fcrgen <x@remote.test>\n"
        "Subject: r\u00e9sum\u00e9 \u65e5\u672c repair-utf8\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"
        "Message-ID: <repair-utf8@example.com>\n\nbody\n"
    ).encode()
    code, text, qid = send(stack, raw)
    assert code == 250, text
    got = arrived(stack, "repair-utf8")
    head = got.split(b"\n\n", 1)[0]
    assert head.isascii(), "raw 8-bit bytes left in the header"
    msg = message_from_bytes(got)
    assert decoded(msg["Subject"]) == "r\u00e9sum\u00e9 \u65e5\u672c repair-utf8"
    ((name, addr),) = email.utils.getaddresses([msg["From"]])
    assert (decoded(name), addr) == ("Ren\u00e9e Dupr\u00e9", "alice@example.com")
    ((name, addr),) = email.utils.getaddresses([msg["To"]])
    assert (decoded(name), addr) == ("J\u00fcrgen", "x@remote.test")
    assert_verifies(stack, got)
    row = stack.decision_for(qid)
    assert row["action"] == "accept"
    assert reason_keys(row) == ["headers.encoded"] * 3  # From, To and Subject
    # The log is written by its own thread: the line may follow the reply by a moment.
    assert stack.sandbox.wait_for(
        lambda: any(
            qid in line and "headers.encoded" in line
            for line in stack.sandbox.milter_log.read_text().splitlines()
        ),
        10,
    )
    # The TUI's decision view shows each repair (the row read back from the real database).
    shown = decision_detail(row).plain
    for header in ("From", "To", "Subject"):
        assert f"headers.encoded (accept) repaired the {header} header" in shown


def test_an_unfolded_1800_octet_to_arrives_refolded_every_address_kept(stack: Stack) -> None:
    addrs = [
        f"Recipient Number {i:02d} <recipient.number.{i:02d}@remote-mail.example>"
        for i in range(30)
    ]
    to = ", ".join(addrs)
    assert len(f"To: {to}") >= 1800
    code, text, qid = send(stack, message("repair-fold", to=to))
    assert code == 250, text
    got = arrived(stack, "repair-fold")
    assert all(len(line) <= 998 for line in header_lines(got))
    msg = message_from_bytes(got)
    assert [a for _, a in email.utils.getaddresses([msg["To"]])] == [
        f"recipient.number.{i:02d}@remote-mail.example" for i in range(30)
    ]
    assert_verifies(stack, got)
    assert reason_keys(stack.decision_for(qid)) == ["headers.refolded"]


def test_a_latin1_subject_is_refused_naming_the_subject(stack: Stack) -> None:
    raw = message("repair-latin1").replace(
        b"Subject: repair-latin1", b"Subject: Caf\xe9 repair-latin1"
    )
    code, text, _ = send(stack, raw)
    assert code == 550
    assert "the Subject header holds bytes that are not UTF-8" in text

    # The writer records the row after the reply (it batches): wait for it, then exactly one.
    def rows() -> list[dict[str, object]]:
        return [r for r in stack.decisions() if "repair-latin1" in str(r["subject"])]

    assert stack.sandbox.wait_for(lambda: rows(), 15)
    assert len(rows()) == 1 and rows()[0]["action"] == "reject"


PREPENDED = [
    "From: CEO <ceo@example.com>",
    "Sender: ceo@example.com",
    "Reply-To: thief@evil.test",
    "To: victim@remote.test",
    "Cc: other@remote.test",
    "Subject: URGENT: new bank details",
    "Date: Tue, 24 Nov 2026 10:00:00 +0000",
    "Message-ID: <forged@evil.test>",
    "MIME-Version: 1.0",
    "Content-Type: text/html",
    "List-Unsubscribe: <https://evil.test/u>",
]


def test_prepending_any_shown_header_breaks_every_signature_under_both_verifiers(
    stack: Stack,
) -> None:
    raw = message(
        "seal-1",
        extra="MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\nCc: c@remote.test\n",
    )
    code, text, _ = send(stack, raw)
    assert code == 250, text
    got = arrived(stack, "seal-1")
    assert_verifies(stack, got)
    algorithms = sorted(t["a"] for t in signature_tags(got))
    assert algorithms == ["ed25519-sha256", "rsa-sha256"]
    still_valid = []
    for header in PREPENDED:
        tampered = header.encode() + b"\n" + got
        dkimpy, opendkim = verified(stack, tampered)
        # Both signatures (RSA and Ed25519) fail under both verifiers.
        if any(dkimpy) or "pass" in opendkim or len(opendkim) != KEYS:
            still_valid.append(f"{header}: dkimpy={dkimpy} opendkim={opendkim}")
    assert still_valid == []


@pytest.mark.parametrize(
    ("header", "code", "says"),
    [
        (
            "Sender: CEO <ceo@example.com>",
            550,
            "Sender <ceo@example.com> is not an address alice@example.com may send as",
        ),
        (
            "Resent-From: ceo@example.com",
            550,
            "Resent-From <ceo@example.com> is not an address alice@example.com may send as",
        ),
        (
            "Resent-Sender: x@elsewhere.test",
            550,
            "Resent-Sender <x@elsewhere.test>: domain elsewhere.test is not hosted",
        ),
        ("Sender: news@example.com, ceo@example.com", 550, "the Sender header"),
        ("Sender: Newsletter <news@example.com>", 250, ""),
        ("Resent-From: news@example.com", 250, ""),
    ],
)
def test_sender_and_resent_from_are_held_to_froms_rules(
    stack: Stack, header: str, code: int, says: str
) -> None:
    token = f"sender-{uuid.uuid4().hex[:8]}"
    got_code, text, _ = send(stack, message(token, extra=header + "\n"))
    assert got_code == code, text
    if code == 250:
        got = arrived(stack, token)
        assert header.split(":")[0].encode() + b": " in got
        assert_verifies(stack, got)
    else:
        assert says in text


def test_the_clients_trace_is_stripped(stack: Stack) -> None:
    raw = message(
        "strip-1",
        extra="Received: from [192.168.1.20] by webmail.example.com\n"
        "X-Forwarded-For: 203.0.113.7\nX-Sender-IP: 203.0.113.7\nX-Originating-IP: [203.0.113.7]\n",
    )
    code, text, _ = send(stack, raw)
    assert code == 250, text
    got = arrived(stack, "strip-1")
    msg = message_from_bytes(got)
    for name in ("X-Forwarded-For", "X-Sender-IP", "X-Originating-IP"):
        assert msg[name] is None, name
    received = [str(r) for r in msg.get_all("Received", [])]
    assert not any("192.168.1.20" in r or "webmail" in r for r in received)
    # Postfix's own submission line (the README's header_checks recipe) is gone too: only the
    # sink's own Received line is left.
    assert not any("(Postfix)" in r for r in received), received
    assert b"203.0.113.7" not in got
    assert_verifies(stack, got)


def test_the_second_copy_of_a_header_is_repaired_in_its_place(stack: Stack) -> None:
    # chgheader's index counts copies of one name; removals of other names do not move it.
    raw = message(
        "repair-second",
        extra="Comments: first\nX-Originating-IP: [203.0.113.9]\nX-Between: 1\n"
        "Comments: zweite \u00c4nderung\nX-After: 2\n",
    )
    code, text, _ = send(stack, raw)
    assert code == 250, text
    got = arrived(stack, "repair-second")
    msg = message_from_bytes(got)
    names = [n for n in msg if n in ("Comments", "X-Between", "X-After", "X-Originating-IP")]
    assert names == ["Comments", "X-Between", "Comments", "X-After"]
    first, second = msg.get_all("Comments")
    assert first == "first"
    assert str(second).isascii() and decoded(str(second)) == "zweite \u00c4nderung"
    assert_verifies(stack, got)


def test_headers_postfix_adds_for_sendmail_mail_are_under_the_oversigned_signature(
    stack: Stack,
) -> None:
    # No To, Date or Message-ID, and a raw UTF-8 Subject (smtputf8_autodetect_classes = verify,
    # from the shipped snippet, keeps Postfix from marking it SMTPUTF8-only). Postfix adds what
    # it adds before the milter sees the message, so the oversigned headers still verify.
    raw = b"From: contact@example.com\nSubject: oversign-sendmail \xc3\xa9t\xc3\xa9\n\nhello\n"
    sb = stack.sandbox
    assert sb.sendmail(raw, "contact@example.com", ["x@remote.test"]).returncode == 0
    sb.kick_pickup()
    got = arrived(stack, "oversign-sendmail")
    assert decoded(message_from_bytes(got)["Subject"]) == "oversign-sendmail \u00e9t\u00e9"
    assert_verifies(stack, got)
