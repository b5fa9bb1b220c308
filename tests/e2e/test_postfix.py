"""Through a real private Postfix: over SMTP (XCLIENT acts as SASL users) and sendmail(1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import Stack
from tests.helpers import message


def test_hosted_from_is_accepted_delivered_and_recorded_once(stack: Stack) -> None:
    r = stack.sandbox.smtp_send(
        message(subject="accept-1"),
        "alice@example.com",
        ["bob@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 250 and r.queue_id, r
    row = stack.decision_for(r.queue_id)
    assert row["action"] == "accept" and row["identity"] == "sasl:alice@example.com"
    assert row["hostname"] == stack.sandbox.myhostname and row["client_addr"] == "127.0.0.1"
    assert stack.sandbox.wait_for(lambda: r.queue_id in stack.sandbox.sink_queue_ids())


def test_unhosted_from_gets_5xx_with_the_reason_and_one_row(stack: Stack) -> None:
    r = stack.sandbox.smtp_send(
        message(from_="Bank <service@bank.example>"),
        "alice@example.com",
        ["bob@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 550 and r.stage == "data"
    assert r.text.startswith("5.7.1 From <service@bank.example>: domain bank.example is not hosted")
    # the queue id of a rejected message is in Postfix's log line and in the decision row
    log = stack.sandbox.maillog.read_text()
    rejected = [
        line
        for line in log.splitlines()
        if "milter-reject: END-OF-MESSAGE" in line and "bank.example" in line
    ]
    assert rejected, "Postfix logged no milter-reject"
    queue_id = rejected[-1].split(": ")[1]
    row = stack.decision_for(queue_id)
    assert row["action"] == "reject" and row["header_from"] == "Bank <service@bank.example>"
    assert queue_id not in stack.sandbox.sink_queue_ids()


def test_sendmail_is_decided_at_end_of_message_and_delivered(stack: Stack) -> None:
    p = stack.sandbox.sendmail(
        message(from_="contact@example.com", subject="via sendmail"),
        "contact@example.com",
        ["frank@remote.test"],
    )
    assert p.returncode == 0, p.stderr
    stack.sandbox.kick_pickup()

    def mine() -> list[dict[str, object]]:
        return [
            r for r in stack.decisions(sender="local:www-data") if r["subject"] == "via sendmail"
        ]

    # The identity names the [local] user whose grant the envelope sender is in.
    assert stack.sandbox.wait_for(mine, 30)
    [row] = mine()
    assert row["action"] == "accept" and row["queue_id"]
    assert stack.sandbox.wait_for(lambda: row["queue_id"] in stack.sandbox.sink_queue_ids())


def test_a_disallowed_sendmail_message_is_refused_at_end_of_message_not_at_rcpt(
    stack: Stack,
) -> None:
    p = stack.sandbox.sendmail(
        message(from_="x@elsewhere.test", subject="local-bad"),
        "x@elsewhere.test",
        ["g@remote.test"],
    )
    assert p.returncode == 0  # postdrop took it; the milter decides in cleanup, at end-of-message
    stack.sandbox.kick_pickup()
    assert stack.sandbox.wait_for(lambda: stack.decisions(sender="local:x@elsewhere.test"), 30)
    [row] = stack.decisions(sender="local:x@elsewhere.test")
    assert row["action"] == "reject"
    assert "milter-reject: END-OF-MESSAGE" in stack.sandbox.maillog.read_text()


def test_inbound_mail_reaches_the_sink_untouched(stack: Stack) -> None:
    body = message(from_="someone@elsewhere.test", to="alice@example.com", subject="inbound-1")
    r = stack.sandbox.smtp_send(body, "someone@elsewhere.test", ["alice@example.com"])
    assert r.code == 250
    assert stack.decision_for(r.queue_id)["outbound"] is False
    assert stack.sandbox.wait_for(lambda: r.queue_id in stack.sandbox.sink_queue_ids())


def test_200_messages_over_20_sessions_give_200_rows_and_no_lock_errors(stack: Stack) -> None:
    def session(n: int) -> list[str]:
        ids = []
        user = f"load{n}@example.com"  # one login a session: under the default 30/minute cap
        for i in range(10):
            r = stack.sandbox.smtp_send(
                message(from_=user, subject=f"load {n}-{i}"), user, ["bob@remote.test"], login=user
            )
            assert r.code == 250, r
            ids.append(r.queue_id)
        return ids

    with ThreadPoolExecutor(20) as pool:
        ids = [q for batch in pool.map(session, range(20)) for q in batch]
    assert len(set(ids)) == 200
    assert stack.sandbox.wait_for(
        lambda: len({r["queue_id"] for r in stack.decisions() if r["queue_id"] in ids}) == 200, 30
    )
    rows = [r for r in stack.decisions() if r["queue_id"] in set(ids)]
    assert len(rows) == 200  # exactly one row each
    for log in (stack.sandbox.milter_log, stack.sandbox.maillog):
        assert "database is locked" not in log.read_text()
    assert stack.sandbox.wait_for(lambda: set(ids) <= set(stack.sandbox.sink_queue_ids()), 60)


def _postwarden(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_reload_takes_effect_without_dropping_the_connection(stack: Stack) -> None:

    extra = stack.config.parent / "policies" / "20-reload.toml"
    extra.unlink(missing_ok=True)
    assert _postwarden(stack, "reload").returncode == 0
    with stack.sandbox.session("carol@example.org", timeout=30) as s:
        msg = message(from_="carol@example.org", subject="before reload")
        s.mail("carol@example.org")
        s.rcpt("x@remote.test")
        code, _ = s.docmd("DATA")
        assert code == 354
        s.send(msg + b".\r\n")
        code, text = s.getreply()
        assert code == 550, text
        extra.write_text('[domains."example.org"]\n')
        res = _postwarden(stack, "reload")
        assert res.returncode == 0 and res.stdout.startswith("reloaded: policy "), res
        s.rset()
        s.mail("carol@example.org")
        s.rcpt("x@remote.test")
        code, text = s.data(message(from_="carol@example.org", subject="after reload"))
        assert code == 250, text  # same SMTP session, same milter connection, new policy
    extra.unlink()
    assert _postwarden(stack, "reload").returncode == 0


def test_a_bad_policy_on_reload_keeps_the_last_good_one(stack: Stack) -> None:
    bad = stack.config.parent / "policies" / "30-bad.toml"
    bad.write_text('[defaults]\nunknown_from_domian = "accept"\n')
    try:
        res = _postwarden(stack, "reload")
        assert res.returncode == 78
        assert (
            'unknown_from_domian: unknown key (did you mean "unknown_from_domain"?)' in res.stderr
        )
        # The daemon itself, signalled directly, refuses it too and keeps serving.
        pid = int((stack.config.parent / "postwarden.pid").read_text())
        os.kill(pid, signal.SIGUSR1)
        assert stack.sandbox.wait_for(
            lambda: "reload refused" in stack.sandbox.milter_log.read_text(), 10
        )
        log = stack.sandbox.milter_log.read_text()
        assert "30-bad.toml: defaults.unknown_from_domian: unknown key" in log
        r = stack.sandbox.smtp_send(
            message(from_="z@elsewhere.test"),
            "alice@example.com",
            ["b@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 550  # still the last good policy: reject, not the bad file's accept
        r = stack.sandbox.smtp_send(
            message(subject="still up"),
            "alice@example.com",
            ["b@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250
    finally:
        bad.unlink()


def test_a_key_only_openssl_s_check_refuses_is_refused_by_the_daemon_on_reload(
    stack: Stack,
) -> None:
    """`postwarden reload` leaves OpenSSL's RSA consistency check (45 ms a key) to the daemon,
    which runs it on changed key files only: a key that fails it is still refused, exit 78, the
    file named, and the last good policy kept."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = rsa.generate_private_key(65537, 2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    policies = stack.config.parent / "policies"
    key = policies / "broken.key"
    key.write_bytes(
        broken.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    extra = policies / "30-broken-key.toml"
    extra.write_text(f'[domains."broken.example"]\nkeys = [{{ selector = "s", file = "{key}" }}]\n')
    try:
        res = _postwarden(stack, "reload")
        assert res.returncode == 78, res
        assert res.stdout.startswith("refused: ") and f"key file {key}" in res.stdout, res
        assert "Invalid private key" in res.stdout
        r = stack.sandbox.smtp_send(
            message(subject="the last good policy"),
            "alice@example.com",
            ["b@remote.test"],
            login="alice@example.com",
        )
        assert r.code == 250
    finally:
        extra.unlink()
        key.unlink()
    assert _postwarden(stack, "reload").returncode == 0


def test_the_daemon_refuses_to_start_on_an_invalid_config(stack: Stack) -> None:
    bad = stack.root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "postwarden.toml").write_text('policies = "p"\n[milter]\ntimeout = "30"\nsoket = "x"\n')
    (bad / "p").mkdir(exist_ok=True)
    (bad / "p" / "a.toml").write_text(
        '[domains."example.com"]\nkeys = [{ selector = "s", file = "missing.key" }]\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(bad / "postwarden.toml"), "milter"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 78
    assert (
        "milter.timeout" in res.stderr
        and "milter.soket" in res.stderr
        and "missing.key does not exist" in res.stderr
    )
    assert "refusing to start: 3 problem(s)" in res.stderr


def test_milter_down_loses_nothing(stack: Stack) -> None:
    sb = stack.sandbox
    assert sb.milter_proc is not None
    sb.milter_proc.kill()  # a crash, not a clean stop
    sb.milter_proc.wait()
    r = sb.smtp_send(
        message(subject="while down"),
        "alice@example.com",
        ["b@remote.test"],
        login="alice@example.com",
    )
    assert 400 <= r.code < 500, r  # SMTP clients are told to retry
    assert "4.7.1" in r.text
    assert not [q for q in sb.queue() if q.get("queue_name") != "deferred"], (
        "nothing may be queued undecided"
    )
    p = sb.sendmail(
        message(from_="cron@example.com", subject="queued while down"),
        "cron@example.com",
        ["h@remote.test"],
    )
    assert p.returncode == 0
    sb.kick_pickup()
    time.sleep(2)
    assert sb.maildrop_count() == 1  # waits in maildrop for the milter

    def mine() -> list[dict[str, object]]:
        return [
            r
            for r in stack.decisions(sender="local:www-data")
            if r["subject"] == "queued while down"
        ]

    assert not mine()

    sb.start_milter(stack.config)
    sb.kick_pickup()
    assert sb.wait_for(mine, 90, interval=1), "not decided after restart"
    [row] = mine()
    assert row["action"] == "accept"
    assert sb.wait_for(lambda: row["queue_id"] in sb.sink_queue_ids(), 30)
    assert sb.maildrop_count() == 0


def test_sigterm_stops_cleanly(stack: Stack) -> None:
    sb = stack.sandbox
    started = time.monotonic()
    assert sb.stop_milter(signal.SIGTERM) == 0
    # With nothing in hand, a stop does not wait out libmilter's accept loop (it took 6.5 s).
    stop_s = time.monotonic() - started
    assert stop_s < 3, stop_s
    assert sb.milter_log.read_text().rstrip().endswith("stopped")
    sb.start_milter(stack.config)
    r = sb.smtp_send(
        message(subject="after restart"),
        "alice@example.com",
        ["b@remote.test"],
        login="alice@example.com",
    )
    assert r.code == 250


def test_sigterm_finishes_the_message_in_hand(stack: Stack) -> None:
    """A message between MAIL FROM and its final dot when SIGTERM arrives is still decided."""

    sb = stack.sandbox
    with stack.sandbox.session("alice@example.com", timeout=30) as s:
        s.mail("alice@example.com")
        s.rcpt("x@remote.test")
        assert s.docmd("DATA")[0] == 354
        s.send(
            message(subject="in hand at SIGTERM").replace(
                b"\r\n\r\n", b"\r\n\r\n" + b"line\r\n" * 1000
            )
        )
        time.sleep(0.5)
        assert sb.milter_proc is not None
        sb.milter_proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert sb.milter_proc.poll() is None, "the daemon quit with a message in hand"
        s.send(b".\r\n")
        code, text = s.getreply()
        assert code == 250, text
    assert sb.milter_proc.wait(30) == 0
    queue_id = text.decode().rsplit(" ", 1)[-1]
    assert stack.decision_for(queue_id)["action"] == "accept"
    sb.start_milter(stack.config)
