"""The identity chain, header hygiene and the bulk rules, through a real Postfix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email import message_from_bytes

import pytest

from tests.e2e.conftest import Stack, module_stack

EXTRA_POLICY = """
[domains."sales.example.com"]

[users."alice@example.com"]
send_as = ["alice@example.com", "*@sales.example.com"]
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for s in module_stack("identity", EXTRA_POLICY):
        s.start()
        yield s


def msg(frm: str, subject: str, extra: str = "", body: str = "hello\r\n") -> bytes:
    return (
        f"From: {frm}\r\nTo: x@remote.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@example.com>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def sink(stack: Stack, token: str) -> bytes:
    assert stack.sandbox.wait_for(
        lambda: any(token.encode() in p.read_bytes() for p in stack.sandbox.sink_dir.iterdir()), 30
    ), f"{token} did not arrive"
    return next(
        p.read_bytes() for p in stack.sandbox.sink_dir.iterdir() if token.encode() in p.read_bytes()
    )


@pytest.mark.parametrize(
    ("frm", "mail_from", "code", "text"),
    [
        (
            "bob@example.com",
            "alice@example.com",
            550,
            "5.7.1 From <bob@example.com> is not an address alice@example.com may send as",
        ),
        ("news@sales.example.com", "alice@example.com", 250, ""),  # an allowed alias
        (
            "alice@example.com",
            "alice@example.org",
            550,
            "does not align with From <alice@example.com>",
        ),
        ("alice@example.com", "", 250, ""),  # a null sender: bounces are allowed
    ],
    ids=["as-another-user", "alias", "other-org-envelope", "null-sender"],
)
def test_sasl_identity(stack: Stack, frm: str, mail_from: str, code: int, text: str) -> None:
    r = stack.sandbox.smtp_send(
        msg(frm, "id"), mail_from, ["x@remote.test"], login="alice@example.com"
    )
    assert r.code == code and text in r.text, r


def test_sendmail_allowed_and_disallowed_local_senders(stack: Stack) -> None:
    sb = stack.sandbox
    assert (
        sb.sendmail(
            msg("Contact <contact@example.com>", "local-ok"),
            "contact@example.com",
            ["x@remote.test"],
        ).returncode
        == 0
    )
    assert (
        sb.sendmail(
            msg("CEO <ceo@example.com>", "local-bad"), "contact@example.com", ["x@remote.test"]
        ).returncode
        == 0
    )
    sb.kick_pickup()
    sink(stack, "local-ok")
    assert sb.wait_for(lambda: any(r["subject"] == "local-bad" for r in stack.decisions()), 30)
    [bad] = [r for r in stack.decisions() if r["subject"] == "local-bad"]
    assert bad["action"] == "reject" and bad["reasons"][0]["code"] == "not_allowed"  # type: ignore[index]
    log = sb.maillog.read_text()
    assert f"{bad['queue_id']}: milter-reject: END-OF-MESSAGE" in log  # decided at end of message
    assert "milter-reject: RCPT" not in log


def test_inbound_mail_reaches_the_sink_byte_for_byte(stack: Stack) -> None:
    sent = msg(
        "Someone <someone@elsewhere.test>",
        "inbound-bytes",
        extra="X-Originating-IP: [10.1.2.3]\r\n",
        body="<p>bare html stays bare</p>\r\n  trailing spaces  \r\n",
    )
    r = stack.sandbox.smtp_send(sent, "someone@elsewhere.test", ["alice@example.com"])
    assert r.code == 250
    got = sink(stack, "inbound-bytes").replace(b"\r\n", b"\n").rstrip(b"\n")
    # Everything the client sent follows the sink's and Postfix's trace headers, unchanged
    # (the sink writes LF line ends and a blank line at the end).
    assert got.endswith(sent.replace(b"\r\n", b"\n").rstrip(b"\n"))


def test_headers_removed_in_every_copy_others_keep_order_missing_ones_added(stack: Stack) -> None:
    raw = (
        b"X-Originating-IP: [10.0.0.1]\r\nFrom: alice@example.com\r\nX-First: 1\r\n"
        b"X-PHP-Originating-Script: 33:form.php\r\nX-Originating-IP: [10.0.0.2]\r\nTo: x@remote.test\r\n"
        b"X-Second: 2\r\nx-originating-ip: [10.0.0.3]\r\nSubject: hygiene-1\r\n\r\nbody\r\n"
    )
    r = stack.sandbox.smtp_send(
        raw, "alice@example.com", ["x@remote.test"], login="alice@example.com"
    )
    assert r.code == 250
    got = message_from_bytes(sink(stack, "hygiene-1"))
    names = [k.lower() for k in got]
    assert "x-originating-ip" not in names and "x-php-originating-script" not in names
    assert [n for n in names if n in ("from", "x-first", "to", "x-second", "subject")] == [
        "from",
        "x-first",
        "to",
        "x-second",
        "subject",
    ]
    assert names.count("date") == 1 and names.count("message-id") == 1
    assert got["Message-ID"].endswith("@example.com>")


def test_a_nul_in_from_is_refused_by_postfix_before_any_milter(stack: Stack) -> None:
    sb = stack.sandbox
    with sb.session("alice@example.com", timeout=30) as s:
        s.mail("alice@example.com")
        s.rcpt("x@remote.test")
        assert s.docmd("DATA")[0] == 354
        s.send(
            b"From: alice@example.com\x00<mallory@evil.test>\r\nSubject: nul-from\r\n\r\nx\r\n.\r\n"
        )
        code, text = s.getreply()
    # Postfix's own refusal (message_reject_characters = \0): the milter never sees it.
    assert (code, text) == (550, b"5.7.1 disallowed character")
    assert not [row for row in stack.decisions() if "nul-from" in str(row["subject"])]


def test_bulk_mail_needs_one_click_unsubscribe(stack: Stack) -> None:
    sb = stack.sandbox
    r = sb.smtp_send(
        msg("alice@example.com", "bulk-1", extra="List-Id: <news.example.com>\r\n"),
        "alice@example.com",
        ["x@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 550
    assert (
        "bulk mail (it has a List-Id) needs one-click unsubscribe (RFC 8058): add List-Unsubscribe"
        in r.text
    )
    ok = msg(
        "alice@example.com",
        "bulk-2",
        extra="List-Id: <news.example.com>\r\n"
        "List-Unsubscribe: <https://example.com/u/7>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    )
    assert (
        sb.smtp_send(ok, "alice@example.com", ["x@remote.test"], login="alice@example.com").code
        == 250
    )


@pytest.mark.parametrize("kind", ["plain", "alternative", "base64", "quoted-printable"])
def test_bare_html_arrives_wrapped_and_signed(stack: Stack, kind: str) -> None:
    import base64

    from postwarden.config import load_config
    from tests.dkim_verify import dkimpy_results, opendkim_results, records_for

    html = b"<p>Hello <b>there</b></p>\r\n<p>second line</p>\r\n"
    head = f"From: alice@example.com\r\nTo: x@remote.test\r\nSubject: html-{kind}\r\nMIME-Version: 1.0\r\n".encode()
    if kind == "plain":
        raw = head + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    else:
        cte = {"alternative": "7bit", "base64": "base64", "quoted-printable": "quoted-printable"}[
            kind
        ]
        part = {
            "7bit": html,
            "base64": base64.encodebytes(html).replace(b"\n", b"\r\n"),
            "quoted-printable": html.replace(b"<p>", b'<p style=3D"x">'),
        }[cte]
        raw = (
            head + b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
            b"--b1\r\nContent-Type: text/plain\r\n\r\nHello there\r\n"
            b"--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "
            + cte.encode()
            + b"\r\n\r\n"
            + part
            + b"--b1--\r\n"
        )
    r = stack.sandbox.smtp_send(
        raw, "alice@example.com", ["x@remote.test"], login="alice@example.com"
    )
    assert r.code == 250, r
    got = sink(stack, f"html-{kind}")
    parsed = message_from_bytes(got)
    [html_part] = [p for p in parsed.walk() if p.get_content_type() == "text/html"]
    decoded = html_part.get_payload(decode=True).replace(b"\r\n", b"\n")  # type: ignore[union-attr]
    assert decoded.startswith(b"<html><body>\n<p") and decoded.rstrip().endswith(
        b"</body></html>"
    ), decoded
    keys = [k for ks in load_config(stack.config).keys.values() for k in ks]
    assert dkimpy_results(got, records_for(keys)) == [True, True]
    assert opendkim_results(got, records_for(keys)) == ["pass", "pass"]
