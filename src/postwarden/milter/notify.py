"""Lock alerts: mailed to [rate].notify from a thread of their own.

They are submitted by SMTP to Postfix's notice service on loopback, the master.cf entry
`postwarden setup-postfix` adds (marked `-o syslog_name=postfix/postwarden-notice`): the shipped
systemd unit's sandbox (NoNewPrivileges, a read-only /var/spool/postfix/maildrop) stops
sendmail(1), whose postdrop needs setgid postdrop and a writable maildrop. Without such a
service (a Postfix set up by hand), sendmail(1) is used; a postdrop that hangs is killed with
its whole process group after SUBMIT_TIMEOUT seconds.

The notice passes through Postfix and so through postwarden again. It carries an
X-Postwarden-Notice header: its issue time and an HMAC, under a key kept in the database, of
its Message-ID, that time, its From and its recipients. The milter takes it for its own (never
counted, never held by a lock, its own included) only when it comes by one of the two paths
notices take (sendmail(1), or the notice service from a loopback client, which names itself
with {daemon_name} = NOTICE_DAEMON_NAME) with the null sender, within ten minutes of issue, and
for the first time (NoticeGuard). Whoever can reach the notice service still cannot forge one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import queue
import re
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

log = logging.getLogger("postwarden")

NOTICE_HEADER = "X-Postwarden-Notice"
NOTICE_TTL_S = 600  # a notice older than this is not one (pickup retries within a minute)
NOTICE_SERVICE_TAG = "syslog_name=postfix/postwarden-notice"
# The {daemon_name} the notice service gives the milter (master.cf -o milter_macro_daemon_name).
NOTICE_DAEMON_NAME = "POSTWARDEN-NOTICE"
SUBMIT_TIMEOUT = 60


class NoticeNotSent(Exception):
    pass


def notice_service(postfix_dir: str) -> tuple[str, int] | None:
    """(host, port) of the master.cf smtpd service tagged for notices, or None."""
    try:
        res = subprocess.run(
            ["postconf", "-c", postfix_dir, "-M"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] != "inet" or NOTICE_SERVICE_TAG not in line:
            continue
        m = re.fullmatch(r"(?:\[?([0-9.]+|[0-9a-fA-F:]+)\]?:)?([0-9]+)", fields[0])
        if m:
            return (m.group(1) or "127.0.0.1"), int(m.group(2))
    return None


def submit_smtp(host: str, port: int, recipients: list[str], message: bytes) -> None:
    """The null sender: a bounce of the notice must not come back as mail to anyone."""
    try:
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=SUBMIT_TIMEOUT) as s:
            refused = s.sendmail("<>", recipients, message)
    except (OSError, smtplib.SMTPException) as exc:
        raise NoticeNotSent(f"SMTP to {host}:{port}: {exc}") from None
    if refused:
        raise NoticeNotSent(f"SMTP to {host}:{port}: refused {refused}")


def submit_sendmail(postfix_dir: str, recipients: list[str], message: bytes) -> None:
    cmd = ["sendmail", "-C", postfix_dir, "-f", "", "-i", "--", *recipients]
    try:
        # A session of its own, so a timeout kills postdrop too, not only sendmail.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise NoticeNotSent(str(exc)) from None
    try:
        _, err = proc.communicate(message, timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise NoticeNotSent(
            f"sendmail timed out after {SUBMIT_TIMEOUT} seconds (killed with its children)"
        ) from None
    if proc.returncode != 0:
        raise NoticeNotSent(
            f"sendmail exit {proc.returncode}: {err.decode(errors='replace').strip()}"
        )


def _mac(secret: str, message_id: str, issued: int, rcpts: list[str], from_: str) -> str:
    text = "\n".join(
        [message_id.strip(), str(issued), from_.strip().lower(), *sorted(r.lower() for r in rcpts)]
    )
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def notice_token(secret: str, message_id: str, issued: int, rcpts: list[str], from_: str) -> str:
    """The header value: when it was issued and an HMAC of the Message-ID, that time, the From
    and every recipient, under the database's key."""
    return f"t={issued}; mac={_mac(secret, message_id, issued, rcpts, from_)}"


class UsedTokens(Protocol):
    """Where NoticeGuard keeps the tokens it has taken: this process (MemoryUsedTokens) or,
    with [store].shared, Redis (store.shared.RedisUsedTokens), so a notice is used once on
    every server."""

    def first_use(self, message_id: str, now: float) -> bool: ...


class MemoryUsedTokens:
    def __init__(self) -> None:
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_use(self, message_id: str, now: float) -> bool:
        with self._lock:
            for mid, at in list(self._used.items()):
                if now - at > NOTICE_TTL_S:
                    del self._used[mid]
            if message_id in self._used:
                return False
            self._used[message_id] = now
        return True


class NoticeGuard:
    """Knows postwarden's own notices: local submission with the null sender, the notifier's
    From, recipients and Message-ID bound by the HMAC, issued within NOTICE_TTL_S, and each
    token taken once. A user who has seen a notice can replay none of it: another recipient,
    another From or a later use fails."""

    def __init__(self, secret: str, used: UsedTokens | None = None) -> None:
        self.secret = secret
        self.used: UsedTokens = used if used is not None else MemoryUsedTokens()

    def check(
        self,
        token: str,
        message_id: str,
        from_: str,
        mail_from: str,
        rcpts: list[str],
        now: float,
        consume: bool = True,
    ) -> bool:
        if not (self.secret and token and message_id) or mail_from:
            return False
        fields = dict(part.strip().partition("=")[::2] for part in token.split(";") if "=" in part)
        try:
            issued = int(fields.get("t", ""))
        except ValueError:
            return False
        if not 0 <= now - issued <= NOTICE_TTL_S:
            return False
        expected = _mac(self.secret, message_id, issued, rcpts, from_)
        if not hmac.compare_digest(expected, fields.get("mac", "")):
            return False
        if not consume:
            return True
        return self.used.first_use(message_id, now)


@dataclass(frozen=True)
class LockEvent:
    identity: str
    cap: str
    queue_id: str
    when: str


class Notifier:
    def __init__(self, postfix_dir: str, recipients: list[str], hostname: str, secret: str) -> None:
        self.postfix_dir = postfix_dir
        self.recipients = recipients
        self.hostname = hostname or "localhost"
        self.secret = secret
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[LockEvent] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="postwarden-notify", daemon=True)
        self._thread.start()

    def locked(self, event: LockEvent) -> None:
        if not self.recipients:
            log.warning(
                "%s: %s locked (%s); [rate].notify is empty: nobody mailed",
                event.queue_id,
                event.identity,
                event.cap,
            )
            return
        self._queue.put(event)

    def from_header(self) -> str:
        return f"postwarden <postmaster@{self.hostname}>"

    def message(self, event: LockEvent) -> bytes:
        message_id = f"<{uuid.uuid4().hex}.postwarden@{self.hostname}>"
        from_ = self.from_header()
        token = notice_token(self.secret, message_id, int(time.time()), self.recipients, from_)
        body = (
            f"postwarden locked the sender {event.identity} at {event.when}:\n"
            f"it broke its cap of {event.cap} with message {event.queue_id}.\n\n"
            "All its mail is now held in Postfix's hold queue, none of it lost. To review it:\n"
            f"  postwarden quarantine list --sender {event.identity}\n"
            f"  postwarden quarantine delete --sender {event.identity}   (if it was spam)\n"
            f"  postwarden unlock {event.identity} --note 'password reset'\n"
            f"  postwarden quarantine release --sender {event.identity}  (if it was not)\n"
        )
        headers = (
            f"From: {from_}\n"
            f"To: {', '.join(self.recipients)}\n"
            f"Subject: postwarden: {event.identity} locked ({event.cap})\n"
            f"Date: {formatdate(localtime=False)}\n"
            f"Message-ID: {message_id}\n"
            f"{NOTICE_HEADER}: {token}\n"
            "Auto-Submitted: auto-generated\n"
        )
        return (headers + "\n" + body).encode()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            service = notice_service(self.postfix_dir)
            try:
                if service:
                    submit_smtp(*service, self.recipients, self.message(event))
                else:
                    submit_sendmail(self.postfix_dir, self.recipients, self.message(event))
            except NoticeNotSent as exc:
                log.error(
                    "%s: lock notice for %s not sent: %s", event.queue_id, event.identity, exc
                )
                self.failed += 1
                continue
            self.sent += 1
            log.info(
                "%s: lock notice for %s mailed to %s",
                event.queue_id,
                event.identity,
                ", ".join(self.recipients),
            )
