"""`postwarden demo`: the main job on its embedded defaults.

A private Postfix on 127.0.0.1 (never the system's queue, never port 25 or 587) with
postwarden on smtpd_milters and non_smtpd_milters, a local sink, scripted traffic, and the
decisions shown as a table. The stack keeps running until `postwarden demo --stop`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwarden import EX_CONFIG, EX_TEMPFAIL
from postwarden.sandbox import Sandbox, SandboxError, port_in_use
from postwarden.store import queries, records
from postwarden.store.db import open_db

SMTP_PORT = 2525
SINK_PORT = 2526

DEMO_CONFIG = """\
# The demo's postwarden.toml: written by `postwarden demo`, relative paths are relative to it.
policies = "policies"

[milter]
socket = "unix:{socket}"
timeout = 30
on_error = "tempfail"
outbound = ["sasl", "local"]
pidfile = "postwarden.pid"
# The demo runs as root: the owner of what its commands create, and who reads its keys.
user = "root"

[log]
to = "stderr"
level = "info"

[store]
database = "postwarden.db"
retention_days = 90

[postfix]
config_directory = "{postfix_dir}"

[server]
hostname = "mail.sandbox.test"
addresses = ["127.0.0.1"]
"""

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "policies" / "demo.toml"

MESSAGE = (
    "From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{mid}@demo.test>\r\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
)


@dataclass(frozen=True)
class Send:
    label: str
    header_from: str
    mail_from: str
    rcpt: str
    subject: str
    login: str = ""  # a SASL login (through XCLIENT); empty: no login
    via: str = "smtp"  # "smtp" or "sendmail" (sendmail(1), the pickup path)
    count: int = 1  # how many times in a row


TRAFFIC = [
    Send(
        "SASL alice@example.com, From alice@example.com",
        "Alice <alice@example.com>",
        "alice@example.com",
        "bob@remote.test",
        "hello from a hosted domain",
        "alice@example.com",
    ),
    Send(
        "SASL news@lists.example.net (include_subdomains)",
        "News <news@lists.example.net>",
        "news@lists.example.net",
        "carol@remote.test",
        "subdomain of example.net",
        "news@lists.example.net",
    ),
    Send(
        "SASL alice@example.com, From service@paypal.example",
        "PayPal <service@paypal.example>",
        "alice@example.com",
        "dave@remote.test",
        "forged sender",
        "alice@example.com",
    ),
    Send(
        "no SASL (inbound): passed untouched",
        "Someone <someone@elsewhere.test>",
        "someone@elsewhere.test",
        "erin@example.com",
        "inbound mail",
    ),
    Send(
        "SASL mallory@example.com (cap 5/minute) sends 7 in a row",
        "Mallory <mallory@example.com>",
        "mallory@example.com",
        "victim@remote.test",
        "cheap pills",
        "mallory@example.com",
        count=7,
    ),
    Send(
        "sendmail(1) -f contact@example.com",
        "Contact form <contact@example.com>",
        "contact@example.com",
        "frank@remote.test",
        "web form via sendmail(1)",
        via="sendmail",
    ),
]


def _message(from_: str, to: str, subject: str, n: int) -> bytes:
    return MESSAGE.format(
        from_=from_, to=to, subject=subject, mid=f"demo-{n}-{os.getpid()}", body=f"demo message {n}"
    ).encode()


def _write_key(path: Path, algorithm: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def write_config(workdir: Path, sandbox: Sandbox) -> Path:
    """The demo's postwarden.toml and policies/demo.toml under `workdir`/etc, with the key
    files that policy names (made once, mode 0600). The end-to-end tests use this too."""
    if not DEMO_POLICY.exists():
        raise SandboxError(
            f"{DEMO_POLICY} not found: run the demo from a source checkout (make demo)"
        )
    etc = workdir / "etc"
    (etc / "policies").mkdir(parents=True, exist_ok=True)
    config = etc / "postwarden.toml"
    config.write_text(DEMO_CONFIG.format(socket=sandbox.socket_path, postfix_dir=sandbox.conf_dir))
    (etc / "policies" / "10-demo.toml").write_text(DEMO_POLICY.read_text())
    _write_key(etc / "policies" / "keys/example.com/rsa2026.key", "rsa")
    _write_key(etc / "policies" / "keys/example.com/ed2026.key", "ed25519")
    return config


def _say(text: str) -> None:
    from postwarden.textsafe import printable_lines  # decisions hold header values

    print(printable_lines(text), flush=True)


def run(workdir: Path) -> int:
    workdir = workdir.resolve()
    sandbox = Sandbox(workdir / "sandbox", smtp_port=SMTP_PORT, sink_port=SINK_PORT)
    stopped = sandbox.stop_all()
    if stopped:
        _say(f"stopped the previous demo ({', '.join(stopped)})")
    # Each run tells the same story: the demo's own queue and database start empty (its keys
    # are kept). Nothing outside the work folder is touched.
    shutil.rmtree(sandbox.queue_dir, ignore_errors=True)
    for name in ("postwarden.db", "postwarden.db-wal", "postwarden.db-shm"):
        (workdir / "etc" / name).unlink(missing_ok=True)
    for port in (SMTP_PORT, SINK_PORT):
        if port_in_use(port):
            print(
                f"port 127.0.0.1:{port} is in use by something else: stop it and run again",
                file=sys.stderr,
            )
            return EX_TEMPFAIL
    try:
        config = write_config(workdir, sandbox)
    except SandboxError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EX_CONFIG
    db_path = workdir / "etc" / "postwarden.db"
    before = _max_id(db_path)
    try:
        _say(
            f"[1/4] private Postfix in {sandbox.root} on 127.0.0.1:{SMTP_PORT}, sink on :{SINK_PORT}"
        )
        sandbox.configure()
        sandbox.start_sink()
        sandbox.start_postfix()
        _say(f"[2/4] postwarden on {sandbox.milter_socket} (log: {sandbox.milter_log})")
        sandbox.start_milter(config)
        sandbox.save_state()
    except SandboxError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sandbox.stop_all()
        return EX_TEMPFAIL

    _say("[3/4] scripted traffic")
    n = 0
    for send in TRAFFIC:
        results = []
        for _ in range(send.count):
            n += 1
            msg = _message(send.header_from, send.rcpt, send.subject, n)
            if send.via == "sendmail":
                p = sandbox.sendmail(msg, send.mail_from, [send.rcpt])
                results.append(f"exit {p.returncode} {p.stderr.decode().strip()}".strip())
            else:
                r = sandbox.smtp_send(msg, send.mail_from, [send.rcpt], login=send.login or None)
                results.append(f"{r.code} {r.text}")
        shown = results[0] if len(set(r.split(": queued")[0] for r in results)) == 1 else results
        _say(f"  {send.label:<58} -> {shown}" + (f" (x{send.count})" if send.count > 1 else ""))
    sandbox.kick_pickup()

    expected = n + 1  # and the lock notice
    deadline = time.monotonic() + 60
    while _max_id(db_path) - before < expected and time.monotonic() < deadline:
        time.sleep(0.2)

    _say("[4/4] decisions (postwarden log)")
    db = open_db(db_path, readonly=True)
    rows = queries.decisions(db, after_id=before, limit=None)
    _say(
        f"  {'queue id':<12} {'action':<10} {'identity':<30} {'header From':<34} {'reasons':<24} signed"
    )
    for row in rows:
        reasons = ", ".join(f"{x['check']}.{x['code']}" for x in row["reasons"]) or "-"
        signed = ", ".join(f"{x['d']}/{x['s']}" for x in row["signatures"]) or "-"
        _say(
            f"  {row['queue_id']:<12} {row['action']:<10} {row['identity']:<30}"
            f" {row['header_from'][:34]:<34} {reasons:<24} {signed}"
        )
    for row in rows:
        for x in row["reasons"]:
            if x["action"] == "reject":
                _say(f"  {row['queue_id']}: 550 5.7.1 {x['text']}")
    sandbox.wait_for(lambda: len(sandbox.sink_messages()) >= 10, timeout=30)
    held = [q for q in sandbox.queue() if q.get("queue_name") == "hold"]
    _say(
        f"  delivered to the sink: {len(sandbox.sink_messages())} message(s) in {sandbox.sink_dir}"
        f" (one is the lock notice to postmaster@example.net)\n"
        f"  held in Postfix's hold queue: {len(held)} message(s)"
    )
    _say(
        "\nThe stack is still running. Send to it, for example:\n"
        f"  swaks --server 127.0.0.1:{SMTP_PORT} --xclient-login alice@example.com \\\n"
        "        --from alice@example.com --to bob@remote.test --header 'From: alice@example.com'\n"
        f"See decisions:  .venv/bin/postwarden --config {config} log\n"
        f"The lock:       .venv/bin/postwarden --config {config} senders\n"
        f"Held mail:      .venv/bin/postwarden --config {config} quarantine list\n"
        "Stop it all:    make demo-stop"
    )
    if len(rows) < expected:
        print(f"demo: only {len(rows)} of {expected} decisions were recorded", file=sys.stderr)
        return 1
    return 0


def _max_id(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        return records.max_decision_id(open_db(db_path, readonly=True))
    except sqlite3.Error:  # no table yet: nothing recorded
        return 0


def stop(workdir: Path) -> int:
    sandbox = Sandbox(workdir.resolve() / "sandbox", smtp_port=SMTP_PORT, sink_port=SINK_PORT)
    stopped = sandbox.stop_all()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0
