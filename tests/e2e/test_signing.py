"""DKIM signing end to end: three hosted domains (one with RSA and Ed25519), 54 varied
messages over SMTP and sendmail(1), each signature checked at the sink by dkimpy and by
OpenDKIM (`opendkim -t`). The module runs twice, once per [milter].transport."""

from __future__ import annotations

import base64
import grp
import stat
from collections.abc import Iterator
from email.message import Message

import pytest

from postwarden.config import load_config
from tests.dkim_verify import dkimpy_results, opendkim_results, records_for, signature_tags
from tests.e2e.conftest import Stack, module_stack
from tests.helpers import write_key

EXTRA_POLICY = """
[domains."example.org"]
keys = [{ selector = "org2026", file = "keys/example.org/org2026.key" }]

[domains."shop.example"]
keys = [{ selector = "ed2026", file = "keys/shop.example/ed2026.key" },
        { selector = "rsa2025", file = "keys/shop.example/rsa2025.key", active = false }]
"""
DOMAINS = {"example.com": 2, "example.org": 1, "shop.example": 1}  # active keys each


@pytest.fixture(scope="module", params=["python", "libmilter"])
def signing_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Once per [milter].transport: the default, and pymilter's libmilter."""
    for s in module_stack("sign", EXTRA_POLICY):
        text = s.config.read_text()
        assert "[milter]\n" in text
        s.config.write_text(
            text.replace("[milter]\n", f'[milter]\ntransport = "{request.param}"\n', 1)
        )
        policies = s.config.parent / "policies"
        s.allow_local("app", [f"sender@{d}" for d in DOMAINS])
        write_key(policies / "keys/example.org/org2026.key")
        write_key(policies / "keys/shop.example/ed2026.key", algorithm="ed25519")
        write_key(policies / "keys/shop.example/rsa2025.key")
        s.start()
        yield s


def variants(domain: str) -> list[tuple[str, bytes, str]]:
    """(name, raw message with LF or CRLF line ends, how to send it)."""
    frm = f"From: Sender <sender@{domain}>\n"
    base = (
        frm + "To: <rcpt@remote.test>\nSubject: {subject}\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"
    )
    b64 = base64.encodebytes(bytes(range(256)) * 20).decode()
    nested = (
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="outer"\n\n'
        'preamble\n--outer\nContent-Type: multipart/alternative; boundary="inner"\n\n'
        "--inner\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        "Gr\u00fc\u00dfe\n--inner\nContent-Type: text/html\n\n<p>hi</p>\n--inner--\n"
        "--outer\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        f"{b64}--outer--\nepilogue\n"
    )
    cases = [
        ("plain", base + "\nHello.\n", "smtp"),
        (
            "8bit",
            base + "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n\n\u00e9t\u00e9 \u00fcber \u65e5\u672c\u8a9e\n",
            "smtp",
        ),
        ("long-line", base + "\n" + "word " * 300 + "\n", "smtp"),
        ("very-long-line", base + "\n" + "x" * 5000 + "\nend\n", "smtp"),
        ("nested-multipart", base + nested, "smtp"),
        ("bare-lf-sendmail", base + "\nline one\nline two\n", "sendmail"),
        ("bare-lf-smtp", base + "\nline one\nline two\n", "smtp-raw-lf"),
        ("trailing-blank-lines", base + "\nbody\n\n\n\n\n", "smtp"),
        (
            "folded-oddly",
            frm + "To: <a@remote.test>,\n\t<b@remote.test>,\n      <c@remote.test>\n"
            "Subject: {subject}\n\t  folded\n \tagain   with   spaces\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"
            "\nbody\n",
            "smtp",
        ),
        ("whitespace", base + "\ntrailing spaces   \n\ttabs\tinside\t\n   \nend\n", "smtp"),
        ("empty-body", base + "\n", "smtp"),
        ("leading-dots", base + "\n.one dot\n..two dots\n.\n", "smtp"),
        ("100k", base + "\n" + ("0123456789abcdef" * 4 + "\n") * 1560, "smtp"),
        (
            "encoded-subject",
            base.replace("Subject: {subject}", "Subject: =?utf-8?q?caf=C3=A9?= {subject}")
            + "\nbody\n",
            "smtp",
        ),
        (
            "bulk",
            base + "List-Id: <news.example>\nList-Unsubscribe: <https://u.example/1>\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n\nnews\n",
            "smtp",
        ),
        ("crlf-sendmail", base + "\nwindows\nline ends\n", "sendmail-crlf"),
        ("blank-lines-inside", base + "\n\n\nmiddle\n\n\nend\n", "sendmail"),
        (
            "from-line-in-body",
            base + "\nFrom here on, a line starting with From\n>From quoted\n",
            "smtp",
        ),
    ]
    return [(name, raw.encode(), via) for name, raw, via in cases]


def send(stack: Stack, raw: bytes, sender: str, via: str) -> None:
    sb = stack.sandbox
    if via.startswith("sendmail"):
        data = raw.replace(b"\n", b"\r\n") if via == "sendmail-crlf" else raw
        assert sb.sendmail(data, sender, ["rcpt@remote.test"]).returncode == 0
        return
    with sb.session(sender) as s:
        s.mail(sender, ["BODY=8BITMIME"])
        s.rcpt("rcpt@remote.test")
        if via == "smtp-raw-lf":
            # smtplib would turn bare LF into CRLF: send the lines as they are.
            assert s.docmd("DATA")[0] == 354
            s.send(raw + b".\r\n")
            code, text = s.getreply()
        else:
            code, text = s.data(raw.replace(b"\n", b"\r\n"))
        assert code == 250, text


def test_every_message_is_signed_by_every_active_key_and_verifies(signing_stack: Stack) -> None:
    sent: dict[str, tuple[str, int]] = {}
    n = 0
    for domain, n_keys in DOMAINS.items():
        for name, raw, via in variants(domain):
            n += 1
            token = f"sig-{n:03d}-{name}"
            send(signing_stack, raw.replace(b"{subject}", token.encode()), f"sender@{domain}", via)
            sent[token] = (domain, n_keys)
    assert len(sent) >= 50
    sb = signing_stack.sandbox
    sb.kick_pickup()

    def arrived() -> dict[str, Message]:
        out = {}
        for path in sb.sink_dir.iterdir():
            raw = path.read_bytes()
            for token in sent:
                if token.encode() in raw:
                    out[token] = raw
        return out

    assert sb.wait_for(lambda: len(arrived()) == len(sent), timeout=90, interval=1), (
        f"only {len(arrived())} of {len(sent)} arrived"
    )
    config = load_config(signing_stack.config)
    records = records_for([k for keys in config.keys.values() for k in keys])
    failures = []
    for token, raw in sorted(arrived().items()):
        domain, n_keys = sent[token]
        dkimpy = dkimpy_results(raw, records)
        opendkim = opendkim_results(raw, records)
        tags = signature_tags(raw)
        ok = (
            dkimpy == [True] * n_keys
            and opendkim == ["pass"] * n_keys
            and all(t["d"] == domain for t in tags)
            and all([x.strip() for x in t["h"].split(":")].count("from") == 2 for t in tags)
            and all("l" not in t for t in tags)
        )
        if not ok:
            failures.append(f"{token}: dkimpy={dkimpy} opendkim={opendkim} tags={tags}")
    assert failures == [], "\n".join(failures)


def test_decision_rows_record_the_signatures(signing_stack: Stack) -> None:
    r = signing_stack.sandbox.smtp_send(
        b"From: x@example.com\r\nSubject: rows\r\n\r\nbody\r\n",
        "x@example.com",
        ["y@remote.test"],
        login="x@example.com",
    )
    row = signing_stack.decision_for(r.queue_id)
    assert sorted((s["d"], s["s"], s["a"]) for s in row["signatures"]) == [  # type: ignore[union-attr]
        ("example.com", "ed2026", "ed25519-sha256"),
        ("example.com", "rsa2026", "rsa-sha256"),
    ]
    # The log is written by its own thread: the line may follow the reply by a moment.
    assert signing_stack.sandbox.wait_for(
        lambda: "signed=example.com/" in signing_stack.sandbox.milter_log.read_text(), 10
    )


def test_rejected_and_inbound_mail_is_not_signed(signing_stack: Stack) -> None:
    sb = signing_stack.sandbox
    r = sb.smtp_send(
        b"From: x@elsewhere.test\r\nSubject: in-unsigned\r\n\r\nb\r\n",
        "x@elsewhere.test",
        ["alice@example.com"],
    )
    assert r.code == 250
    assert sb.wait_for(lambda: any(b"in-unsigned" in p.read_bytes() for p in sb.sink_dir.iterdir()))
    raw = next(p.read_bytes() for p in sb.sink_dir.iterdir() if b"in-unsigned" in p.read_bytes())
    assert b"DKIM-Signature" not in raw
    assert signing_stack.decision_for(r.queue_id)["signatures"] == []


def test_the_transport_configured_is_the_one_serving(signing_stack: Stack) -> None:
    named = load_config(signing_stack.config).daemon.milter.transport
    log = signing_stack.sandbox.milter_log.read_text()
    assert f"({named} transport)" in log
    # The other never started in this module's milter.
    other = {"python": "libmilter", "libmilter": "python"}[named]
    assert f"({other} transport)" not in log
    # A local user must not reach the milter: the socket is group postfix, mode 0660, under
    # either transport, and no temporary name is left beside it.
    sock = signing_stack.sandbox.socket_path
    st = sock.stat()
    assert (grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)) == ("postfix", 0o660)
    assert [p.name for p in sock.parent.iterdir() if p.name.startswith(f".{sock.name}.")] == []
