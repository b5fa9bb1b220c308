"""Lock alerts, and the admin's other notices (AdminNotice: a domain's DNS changed, the hold
queue grew, the writer lost rows), mailed to [rate].notify from a thread of their own, or at
once by a command (Notifier.send_now).

They are submitted by SMTP to Postfix's notice service, the master.cf entry `postwarden
setup-postfix` adds (marked `-o syslog_name=postfix/postwarden-notice`): an smtpd on a
UNIX-domain socket in the spool's public/ folder, which only group postdrop (postwarden's
service user among them) can reach. Postfix shows the milter such a client as it shows
sendmail(1) mail (localhost, port 0), so the milter takes a notice's HMAC as it does for local
mail. The shipped
systemd unit's sandbox (NoNewPrivileges, a read-only /var/spool/postfix/maildrop) stops
sendmail(1), whose postdrop needs setgid postdrop and a writable maildrop. Without such a
service (a Postfix set up by hand), sendmail(1) is used; a postdrop that hangs is killed with
its whole process group after SUBMIT_TIMEOUT seconds.

The notice passes through Postfix and so through postwarden again. It carries an
X-Postwarden-Notice header: its issue time and an HMAC, under a key kept in the database, of
its Message-ID, that time, its From and its recipients. The milter takes it for its own (never
counted, never held by a lock, its own included) only when it comes by one of the two paths
notices take (sendmail(1), or the notice service, an smtpd on a unix socket in public/, which names itself
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
import socket
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


def _postconf(postfix_dir: str, *args: str) -> str:
    try:
        res = subprocess.run(
            ["postconf", "-c", postfix_dir, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout if res.returncode == 0 else ""


def notice_service(postfix_dir: str) -> str | tuple[str, int] | None:
    """Where the master.cf smtpd service tagged for notices listens: the path of its
    UNIX-domain socket (the kind setup-postfix adds), or (host, port); None when there is none."""
    for line in _postconf(postfix_dir, "-M").splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[7] != "smtpd" or NOTICE_SERVICE_TAG not in line:
            continue
        if fields[1] == "unix":
            queue = _postconf(postfix_dir, "-h", "queue_directory").strip()
            folder = "private" if fields[2] != "n" else "public"
            return f"{queue}/{folder}/{fields[0]}" if queue else None
        m = re.fullmatch(r"(?:\[?([0-9.]+|[0-9a-fA-F:]+)\]?:)?([0-9]+)", fields[0])
        if fields[1] == "inet" and m:
            return (m.group(1) or "127.0.0.1"), int(m.group(2))
    return None


class _UnixSMTP(smtplib.SMTP):
    """SMTP over a UNIX-domain socket (Postfix's smtpd on a master.cf "unix" service)."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        super().__init__(local_hostname="localhost", timeout=timeout)
        code, msg = self.connect(path)
        if code != 220:
            self.close()
            raise smtplib.SMTPConnectError(code, msg)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock


def submit_smtp(where: str | tuple[str, int], recipients: list[str], message: bytes) -> None:
    """The null sender: a bounce of the notice must not come back as mail to anyone."""
    name = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
    try:
        client = (
            _UnixSMTP(where, SUBMIT_TIMEOUT)
            if isinstance(where, str)
            else smtplib.SMTP(*where, local_hostname="localhost", timeout=SUBMIT_TIMEOUT)
        )
        with client as s:
            refused = s.sendmail("<>", recipients, message)
    except (OSError, smtplib.SMTPException) as exc:
        raise NoticeNotSent(f"SMTP to {name}: {exc}") from None
    if refused:
        raise NoticeNotSent(f"SMTP to {name}: refused {refused}")


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
        mac = fields.get("mac", "")
        if not re.fullmatch(r"[0-9a-f]{64}", mac):
            return False  # compare_digest raises on non-ASCII text: a forged token is just "no"
        try:
            expected = _mac(self.secret, message_id, issued, rcpts, from_)
        except UnicodeEncodeError:
            return False  # a Message-ID, From or recipient with bytes that are not UTF-8
        if not hmac.compare_digest(expected, mac):
            return False
        if not consume:
            return True
        return self.used.first_use(message_id, now)


# ---- any notice: complaints and suppressed recipients (feedback.md) ----------------------------


def from_header(hostname: str) -> str:
    return f"postwarden <postmaster@{hostname or 'localhost'}>"


def build_notice(
    secret: str, hostname: str, recipients: list[str], subject: str, body: str
) -> bytes:
    """A notice with its X-Postwarden-Notice token, bound to its Message-ID, time, From and
    recipients: the milter passes it, never counted (the same proof as a lock notice)."""
    hostname = hostname or "localhost"
    message_id = f"<{uuid.uuid4().hex}.postwarden@{hostname}>"
    from_ = from_header(hostname)
    token = notice_token(secret, message_id, int(time.time()), recipients, from_)
    subject = re.sub(r"[\x00-\x1f\x7f]+", " ", subject)[:300]
    headers = (
        f"From: {from_}\n"
        f"To: {', '.join(recipients)}\n"
        f"Subject: {subject}\n"
        f"Date: {formatdate(localtime=False)}\n"
        f"Message-ID: {message_id}\n"
        f"{NOTICE_HEADER}: {token}\n"
        "Auto-Submitted: auto-generated\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
    )
    return (headers + "\n" + body).encode("utf-8", errors="replace")


def submit(postfix_dir: str, recipients: list[str], message: bytes) -> None:
    """To the notice service when setup-postfix made one, else through sendmail(1)."""
    service = notice_service(postfix_dir)
    if service:
        submit_smtp(service, recipients, message)
    else:
        submit_sendmail(postfix_dir, recipients, message)


@dataclass(frozen=True)
class Notice:
    """A notice to someone other than [rate].notify (a sender told its recipients were removed)."""

    recipients: tuple[str, ...]
    subject: str
    body: str
    queue_id: str


@dataclass(frozen=True)
class LockEvent:
    identity: str
    cap: str
    queue_id: str
    when: str


@dataclass(frozen=True)
class AdminNotice:
    """A notice to the admin that is not a lock: a domain's DNS changed, the hold queue grew,
    the writer lost rows (issue 20)."""

    subject: str
    body: str


class Notifier:
    def __init__(self, postfix_dir: str, recipients: list[str], hostname: str, secret: str) -> None:
        self.postfix_dir = postfix_dir
        self.recipients = recipients
        self.hostname = hostname or "localhost"
        self.secret = secret
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[LockEvent | AdminNotice | Notice] = queue.Queue()
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

    def send(self, notice: Notice) -> None:
        """Queue a notice to its own recipients (feedback.md: suppressed recipients removed)."""
        if notice.recipients:
            self._queue.put(notice)

    def from_header(self) -> str:
        return from_header(self.hostname)

    def message(self, event: LockEvent) -> bytes:
        body = (
            f"postwarden locked the sender {event.identity} at {event.when}:\n"
            f"it broke its cap of {event.cap} with message {event.queue_id}.\n\n"
            "All its mail is now held in Postfix's hold queue, none of it lost. To review it:\n"
            f"  postwarden quarantine list --sender {event.identity}\n"
            f"  postwarden quarantine delete --sender {event.identity}   (if it was spam)\n"
            f"  postwarden unlock {event.identity} --note 'password reset'\n"
            f"  postwarden quarantine release --sender {event.identity}  (if it was not)\n"
        )
        return self.compose(f"postwarden: {event.identity} locked ({event.cap})", body)

    def compose(self, subject: str, body: str) -> bytes:
        """A notice to [rate].notify: the bound token makes it postwarden's own (never counted,
        never held)."""
        message_id = f"<{uuid.uuid4().hex}.postwarden@{self.hostname}>"
        from_ = self.from_header()
        token = notice_token(self.secret, message_id, int(time.time()), self.recipients, from_)
        headers = (
            f"From: {from_}\n"
            f"To: {', '.join(self.recipients)}\n"
            f"Subject: {subject}\n"
            f"Date: {formatdate(localtime=False)}\n"
            f"Message-ID: {message_id}\n"
            f"{NOTICE_HEADER}: {token}\n"
            "Auto-Submitted: auto-generated\n"
        )
        return (headers + "\n" + body).encode()

    def submit(self, message: bytes) -> None:
        """By SMTP to the notice service when master.cf has one, else sendmail(1)."""
        submit(self.postfix_dir, self.recipients, message)

    # ---- admin notices (issue 20): DNS changes, the hold queue, the writer -------------------

    def tell(self, notice: AdminNotice) -> None:
        """Queue a notice to the admin (sent from the notifier's thread)."""
        if not self.recipients:
            log.warning("%s; [rate].notify is empty: nobody mailed", notice.subject)
            return
        self._queue.put(notice)

    def send_now(self, notice: AdminNotice) -> None:
        """Send in this thread (a command): raises NoticeNotSent."""
        if not self.recipients:
            raise NoticeNotSent("[rate].notify is empty: nobody to mail")
        try:
            self.submit(self.compose(notice.subject, notice.body))
        except NoticeNotSent:
            self.failed += 1
            raise
        self.sent += 1

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if isinstance(event, AdminNotice):
                try:
                    self.send_now(event)
                except NoticeNotSent as exc:
                    log.error("notice %r not sent: %s", event.subject, exc)
                    continue
                log.info("notice %r mailed to %s", event.subject, ", ".join(self.recipients))
                continue
            if isinstance(event, Notice):
                self._send_notice(event)
                continue
            try:
                self.submit(self.message(event))
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

    def _send_notice(self, notice: Notice) -> None:
        rcpts = list(notice.recipients)
        try:
            submit(
                self.postfix_dir,
                rcpts,
                build_notice(self.secret, self.hostname, rcpts, notice.subject, notice.body),
            )
        except NoticeNotSent as exc:
            log.error("%s: notice to %s not sent: %s", notice.queue_id, ", ".join(rcpts), exc)
            self.failed += 1
            return
        self.sent += 1
        log.info("%s: notice mailed to %s", notice.queue_id, ", ".join(rcpts))
