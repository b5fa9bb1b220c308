"""Issue 20 end to end through the private Postfix: the metrics endpoint agrees with the decision
rows and the hold queue after a scripted burst, and `dns-check --notify-changes` mails the admin
exactly once when a domain's SPF record breaks (the loopback DNS server)."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from postwarden.config import load_config
from postwarden.metrics import SCRAPE_CACHE_S
from postwarden.sandbox import free_port
from tests.dnsserver import LoopbackDNS, txt
from tests.e2e.conftest import Stack, held_ids, module_stack, pw, sink_with
from tests.helpers import message
from tests.unit.test_metrics import samples, value


@pytest.fixture(scope="module")
def mstack() -> Iterator[tuple[Stack, int]]:
    for s in module_stack("metrics"):
        port = free_port()
        s.config.write_text(s.config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        s.start()
        yield s, port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return str(r.read().decode())


def test_a_scrape_after_a_burst_equals_the_decision_rows_and_the_hold_queue(
    mstack: tuple[Stack, int],
) -> None:
    stack, port = mstack
    sb = stack.sandbox
    assert value(scrape(port), "postwarden_decisions_total", action="accept") == 0
    codes: list[int] = []
    for i in range(5):  # accepted and signed
        codes.append(
            sb.smtp_send(
                message(from_="alice@example.com", subject=f"ok-{i}"),
                "alice@example.com",
                ["bob@remote.test"],
                login="alice@example.com",
            ).code
        )
    for i in range(3):  # refused: a From domain not hosted here
        codes.append(
            sb.smtp_send(
                message(from_="service@paypal.example", subject=f"forged-{i}"),
                "alice@example.com",
                ["dave@remote.test"],
                login="alice@example.com",
            ).code
        )
    for i in range(8):  # mallory's cap is 5/minute: 5 accepted, then locked and held
        codes.append(
            sb.smtp_send(
                message(from_="mallory@example.com", subject=f"pills-{i}"),
                "mallory@example.com",
                ["victim@remote.test"],
                login="mallory@example.com",
            ).code
        )
    for i in range(2):  # inbound: passed
        codes.append(
            sb.smtp_send(
                message(from_="someone@elsewhere.test", subject=f"in-{i}"),
                "someone@elsewhere.test",
                ["erin@example.com"],
            ).code
        )
    assert Counter(codes) == {250: 15, 550: 3}
    sb.kick_pickup()  # the lock notice, through sendmail(1) and pickup
    assert sb.wait_for(lambda: len(stack.decisions()) == 19, 60), len(stack.decisions())
    assert sb.wait_for(lambda: len(held_ids(stack)) == 3, 30)

    rows = stack.decisions()
    text = scrape(port)
    by_action = Counter(str(r["action"]) for r in rows)
    assert by_action == {"accept": 13, "reject": 3, "quarantine": 3}
    for action in ("accept", "reject", "quarantine", "tempfail"):
        assert value(text, "postwarden_decisions_total", action=action) == by_action[action]
    by_reason = Counter(
        (f"{x['check']}.{x['code']}", x["action"])
        for r in rows
        for x in r["reasons"]  # type: ignore[attr-defined]
    )
    scraped = {
        (lab["reason"], lab["action"]): v
        for name, lab, v in samples(text)
        if name == "postwarden_decision_reasons_total"
    }
    assert scraped == by_reason
    assert ("rate.locked", "quarantine") in scraped and ("outbound.notice", "accept") in scraped

    def held_gauge() -> dict[str, float]:
        return {
            lab["reason"]: v
            for n, lab, v in samples(scrape(port))
            if n == "postwarden_held_messages"
        }

    # The first scrape, before the burst, saw an empty hold queue; what postqueue says is cached
    # SCRAPE_CACHE_S (15 s), so a scrape storm cannot hammer it.
    assert sb.wait_for(lambda: sum(held_gauge().values()) == 3, SCRAPE_CACHE_S + 10)
    held = held_gauge()
    text = scrape(port)
    assert sum(held.values()) == len(held_ids(stack)) == 3  # postqueue -j's hold count
    assert held == {"rate.exceeded": 1, "rate.locked": 2}
    assert value(text, "postwarden_locks_total") == 1
    assert value(text, "postwarden_locked_senders") == 1
    signed = Counter(
        (sig["d"], sig["a"])
        for r in rows
        for sig in r["signatures"]  # type: ignore[attr-defined]
    )
    assert signed == {("example.com", "rsa-sha256"): 13, ("example.com", "ed25519-sha256"): 13}
    scraped_sigs = {
        (lab["domain"], lab["algorithm"]): v
        for n, lab, v in samples(text)
        if n == "postwarden_signatures_total"
    }
    assert scraped_sigs == signed  # held mail is signed too, as it will leave once released
    assert value(text, "postwarden_decision_seconds_count") == 19
    assert sb.wait_for(lambda: "postwarden_notices_sent_total 1.0" in scrape(port), 30)
    # no sender, recipient or identity is ever a label
    for needle in ("mallory", "alice", "victim", "sasl:", "remote.test", "paypal"):
        assert needle not in text


def _zone(stack: Stack, spf: str) -> str:
    keys = load_config(stack.config).keys
    lines = [
        "1.0.0.127.in-addr.arpa. 300 IN PTR mail.sandbox.test.",
        "mail.sandbox.test. 300 IN A 127.0.0.1",
    ]
    for domain in ("example.com", "example.net"):
        lines += [
            txt(f"{domain}.", spf if domain == "example.com" else "v=spf1 ip4:127.0.0.1 -all"),
            txt(f"_dmarc.{domain}.", f"v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"),
            f"{domain}. 300 IN MX 10 mail.sandbox.test.",
        ]
        for key in keys.get(domain, []):
            lines.append(
                txt(
                    f"{key.selector}._domainkey.{domain}.",
                    f"v=DKIM1; k={key.algorithm}; p={key.public_key_b64()}",
                )
            )
    return "\n".join(lines) + "\n"


def test_a_broken_spf_record_is_mailed_to_the_admin_once(mstack: tuple[Stack, int]) -> None:
    stack, port = mstack
    sb = stack.sandbox
    subject = "postwarden: DNS changed for"
    with LoopbackDNS(_zone(stack, "v=spf1 ip4:127.0.0.1 -all")) as dns:
        # postwarden.toml is read at start only: the running daemon is not disturbed by this
        stack.config.write_text(
            stack.config.read_text() + f'\n[dns]\nnameservers = ["{dns.address}"]\ntimeout = 2.0\n'
        )
        first = pw(stack, "dns-check", "--notify-changes")
        assert first.returncode == 0, first.stdout + first.stderr  # everything passes
        assert "mailed" not in first.stderr

        dns.set_zone(_zone(stack, "v=spf1 ip4:192.0.2.1 -all"))  # the SPF record breaks
        broken = pw(stack, "dns-check", "--notify-changes")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"mailed postmaster@example.net: {subject} example.com" in broken.stderr

        again = pw(stack, "dns-check", "--notify-changes")  # unchanged: no mail
        assert again.returncode == 1 and "mailed" not in again.stderr, again.stderr

    sb.kick_pickup()
    assert sb.wait_for(lambda: len(sink_with(stack, subject)) == 1, 60)
    sb.kick_pickup()
    time.sleep(12)  # longer than pickup's wakeup: a second mail would have arrived
    mails = sink_with(stack, subject)
    assert len(mails) == 1
    mail = mails[0].decode()
    assert (
        f"Subject: {subject} example.com\r\n" in mail or f"Subject: {subject} example.com\n" in mail
    )
    assert "To: postmaster@example.net" in mail
    body = mail.split("\n\n", 1)[1] if "\n\n" in mail else mail.split("\r\n\r\n", 1)[1]
    assert "example.com" in body and "example.net" not in body.split("Every finding")[0]
    assert "spf: was pass, now FAIL" in body
    assert "check_host(127.0.0.1)" in body  # the failure
    assert 'fix: example.com. IN TXT "v=spf1 ip4:127.0.0.1' in body  # and its fix
    # the notice is postwarden's own: decided as a notice, neither counted nor signed
    rows = [r for r in stack.decisions() if str(r["subject"]).startswith(subject)]
    assert len(rows) == 1 and rows[0]["reasons"][0]["code"] == "notice"  # type: ignore[index]

    # The gauges are read at scrape time behind a 15 s cache: an earlier scrape's may still be it.
    def failing() -> bool:
        found = [
            v
            for n, lab, v in samples(scrape(port))
            if n == "postwarden_dns_check_findings"
            and lab == {"domain": "example.com", "status": "fail"}
        ]
        return bool(found) and found[0] >= 1

    assert sb.wait_for(failing, 40, interval=1)
    text = scrape(port)
    assert value(text, "postwarden_dns_check_findings", domain="example.net", status="fail") == 0


def test_reloads_are_counted_by_result(mstack: tuple[Stack, int]) -> None:
    stack, port = mstack
    bad = stack.config.parent / "policies" / "30-bad.toml"
    bad.write_text("[rate]\nmessagse = []\n")
    refused = pw(stack, "reload")  # the command refuses it without troubling the daemon
    assert refused.returncode == 78, refused.stdout + refused.stderr
    assert value(scrape(port), "postwarden_reloads_total", result="refused") == 0
    assert stack.sandbox.milter_proc is not None
    os.kill(stack.sandbox.milter_proc.pid, signal.SIGUSR1)  # as `kill -USR1` would, unchecked
    assert stack.sandbox.wait_for(
        lambda: value(scrape(port), "postwarden_reloads_total", result="refused") == 1, 10
    )
    text = scrape(port)
    assert value(text, "postwarden_reload_last_ok") == 0
    bad.unlink()
    taken = pw(stack, "reload")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    text = scrape(port)
    assert value(text, "postwarden_reloads_total", result="ok") == 1
    assert value(text, "postwarden_reload_last_ok") == 1
