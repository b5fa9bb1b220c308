"""Issue 13's bypasses, tried through a real private Postfix (decisions.md, Sender identity).

What each attempt gets:
1. a SASL login in another case is the same sender: the 4th message of a 3/minute cap is held;
2. a web form's envelope sender in another case is the same local sender (`local:www-data`):
   its 4th message of the minute is held;
3. a local null sender borrows nobody's grant: `sendmail -f ''` with a hosted From is refused;
4. a seen lock notice replayed (its Message-ID and token, another From and recipients, or the
   very same message again) is not a notice: it is checked and counted like any mail;
7. with `unknown_from_domain = "accept"`, two From headers are still refused, and a foreign
   From still has its envelope sender held to send_as;
8. MIME nested deeper than 32 levels is refused with a 5xx that says why (the milter reads
   the structure as it streams, without recursion);
13. what counts as local: only the exact connect Postfix's cleanup emulates for the pickup
    path (IPv4, "localhost", 127.0.0.1, port 0; the protocol tests refuse the other shapes).
    `sendmail -bs` submits through postdrop and pickup too (measured: the same connect), so it
    is local mail, decided as the local user its envelope sender names, never passed as
    inbound.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, module_stack
from tests.helpers import message


@pytest.fixture(scope="module")
def hstack() -> Iterator[Stack]:
    for s in module_stack("hostile"):
        policy = s.config.parent / "policies" / "10-demo.toml"
        text = policy.read_text()
        text = text.replace('unknown_from_domain = "reject"', 'unknown_from_domain = "accept"')
        text = text.replace('messages = ["30/minute",', 'messages = ["3/minute",')
        text = text.replace(
            'send_as = { "www-data" = ["contact@example.com", "cron@example.com"] }',
            'send_as = { "www-data" = ["contact@example.com", "cron@example.com"],'
            ' "root" = ["*@example.net"] }',
        )
        policy.write_text(text)
        s.start()
        yield s


def _rows(stack: Stack, subject: str) -> list[dict[str, object]]:
    return [r for r in stack.decisions() if r["subject"] == subject]


def test_1_a_login_in_another_case_is_the_same_sender(hstack: Stack) -> None:
    sb = hstack.sandbox
    codes = []
    for i, login in enumerate(["capped@example.com"] * 3 + ["Capped@Example.COM"]):
        r = sb.smtp_send(
            message(from_="capped@example.com", subject=f"case-{i}"),
            "capped@example.com",
            ["bob@remote.test"],
            login=login,
        )
        codes.append(r.code)
        hstack.decision_for(r.queue_id)
    assert codes == [250] * 4
    rows = [_rows(hstack, f"case-{i}")[0] for i in range(4)]
    assert {r["identity"] for r in rows} == {"sasl:capped@example.com"}
    assert [r["action"] for r in rows] == ["accept"] * 3 + ["quarantine"]
    assert "rate.exceeded" in {f"{x['check']}.{x['code']}" for x in rows[3]["reasons"]}  # type: ignore[attr-defined]


def test_4_a_seen_notice_cannot_be_replayed(hstack: Stack) -> None:
    sb = hstack.sandbox
    sb.kick_pickup()
    assert sb.wait_for(
        lambda: any("capped@example.com locked" in str(m["Subject"]) for m in sb.sink_messages()),
        60,
    )
    [notice] = [m for m in sb.sink_messages() if "capped@example.com locked" in str(m["Subject"])]
    mid, token = str(notice["Message-ID"]), str(notice["X-Postwarden-Notice"])
    forged = (
        f"From: CEO <ceo@example.com>\r\nTo: a@remote.test\r\nSubject: forged notice\r\n"
        f"Message-ID: {mid}\r\nX-Postwarden-Notice: {token}\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\npay this invoice\r\n"
    ).encode()
    rcpts = [f"victim{i}@remote.test" for i in range(5)]
    assert sb.sendmail(forged, "", rcpts).returncode == 0
    same = notice.as_bytes().replace(b"Subject: postwarden:", b"Subject: replayed postwarden:")
    assert sb.sendmail(same, "", ["postmaster@example.net"]).returncode == 0
    sb.kick_pickup()
    assert sb.wait_for(lambda: _rows(hstack, "forged notice"), 60)
    assert sb.wait_for(
        lambda: [r for r in hstack.decisions() if str(r["subject"]).startswith("replayed")], 60
    )
    [forged_row] = _rows(hstack, "forged notice")
    [replayed] = [r for r in hstack.decisions() if str(r["subject"]).startswith("replayed")]
    for row in (forged_row, replayed):
        codes = [f"{x['check']}.{x['code']}" for x in row["reasons"]]  # type: ignore[attr-defined]
        assert "outbound.notice" not in codes, codes
        assert row["signatures"] == []
    assert forged_row["action"] == "reject"  # CEO's From is nobody's to use


def test_2_a_web_form_in_another_case_is_the_same_local_sender(hstack: Stack) -> None:
    sb = hstack.sandbox
    for i, env in enumerate(["contact@example.com"] * 3 + ["CONTACT@Example.com"]):
        p = sb.sendmail(
            message(from_="contact@example.com", subject=f"form-{i}"),
            env,
            ["visitor@remote.test"],
            user="www-data",
        )
        assert p.returncode == 0, p.stderr
    sb.kick_pickup()
    assert sb.wait_for(lambda: all(_rows(hstack, f"form-{i}") for i in range(4)), 60)
    rows = [_rows(hstack, f"form-{i}")[0] for i in range(4)]
    assert {r["identity"] for r in rows} == {"local:www-data"}
    assert [r["action"] for r in rows] == ["accept"] * 3 + ["quarantine"]


def test_3_a_local_null_sender_gets_nobodys_grant(hstack: Stack) -> None:
    sb = hstack.sandbox
    p = sb.sendmail(
        message(from_="Boss <boss@example.net>", subject="null sender"), "", ["x@remote.test"]
    )
    assert p.returncode == 0, p.stderr
    sb.kick_pickup()
    assert sb.wait_for(lambda: _rows(hstack, "null sender"), 60)
    [row] = _rows(hstack, "null sender")
    assert row["identity"] == "local:<>" and row["action"] == "reject"
    assert "identity.not_allowed" in {f"{x['check']}.{x['code']}" for x in row["reasons"]}  # type: ignore[attr-defined]


def test_7_accepting_unknown_from_domains_never_accepts_the_unreadable(hstack: Stack) -> None:
    sb = hstack.sandbox
    two = message(subject="two froms", extra="From: CEO <ceo@example.com>\r\n")
    r = sb.smtp_send(two, "alice@example.com", ["b@remote.test"], login="alice@example.com")
    assert r.code == 550, r
    foreign = message(from_="someone@elsewhere.test", subject="foreign from")
    r = sb.smtp_send(foreign, "ceo@example.com", ["b@remote.test"], login="alice@example.com")
    assert r.code == 550 and "MAIL FROM <ceo@example.com>" in r.text, r
    ok = sb.smtp_send(
        message(from_="someone@elsewhere.test", subject="foreign ok"),
        "alice@example.com",
        ["b@remote.test"],
        login="alice@example.com",
    )
    assert ok.code == 250, ok  # what unknown_from_domain = "accept" is for


def test_13_sendmail_bs_is_decided_as_local_mail(hstack: Stack) -> None:
    sb = hstack.sandbox
    session = (
        "HELO localhost\r\nMAIL FROM:<contact@example.com>\r\nRCPT TO:<z@remote.test>\r\nDATA\r\n"
        "From: contact@example.com\r\nSubject: via -bs\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bs@example.com>\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    out = subprocess.run(
        ["/usr/sbin/sendmail", "-C", str(sb.conf_dir), "-bs"],
        input=session.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out
    assert sb.wait_for(lambda: _rows(hstack, "via -bs"), 30)
    [row] = _rows(hstack, "via -bs")
    assert row["identity"] == "local:www-data" and row["outbound"] is True, row


@pytest.mark.parametrize("depth", [50, 1200])
def test_8_deep_mime_is_refused_with_a_5xx_that_says_why(hstack: Stack, depth: int) -> None:
    body = (
        "".join(
            f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n"
            for i in range(depth)
        )
        + f"--b{depth}\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
    )
    msg = message(
        from_="alice@example.com",
        subject=f"deep {depth}",
        extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n",
        body=body,
    )
    r = hstack.sandbox.smtp_send(
        msg, "alice@example.com", ["b@remote.test"], login="alice@example.com"
    )
    assert r.code == 550 and "nested more than 32 deep" in r.text, r
    assert hstack.sandbox.wait_for(lambda: _rows(hstack, f"deep {depth}"), 15)
    [row] = _rows(hstack, f"deep {depth}")
    assert row["action"] == "reject" and row["error"] == ""


def test_5_a_90_kb_from_stalls_nobody(hstack: Stack) -> None:
    """A 90 KB From (the parser was quadratic: 40 KB took 4.4 s holding the GIL) is answered
    within 5 s, and a message sent meanwhile on another session within 2 s."""
    import threading
    import time as _time

    sb = hstack.sandbox
    huge = message(from_=("a." * 45_000) + " <alice@example.com>", subject="huge from")
    result: dict[str, object] = {}

    def big() -> None:
        started = _time.monotonic()
        result["big"] = sb.smtp_send(
            huge, "alice@example.com", ["b@remote.test"], login="alice@example.com"
        )
        result["big_s"] = _time.monotonic() - started

    t = threading.Thread(target=big)
    t.start()
    _time.sleep(0.3)
    started = _time.monotonic()
    other = sb.smtp_send(
        message(from_="alice@example.com", subject="meanwhile"),
        "alice@example.com",
        ["c@remote.test"],
        login="alice@example.com",
    )
    other_s = _time.monotonic() - started
    t.join(30)
    assert other.code == 250 and other_s < 2, (other, other_s)
    big_result = result["big"]
    assert big_result.code == 550 and float(result["big_s"]) < 5, result  # type: ignore[attr-defined]
