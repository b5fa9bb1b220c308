"""Lock alerts: mailed to [rate].notify with sendmail(1), from a thread of their own.

The notice passes through Postfix and so through postwarden again. It carries an
X-Postwarden-Notice header: its issue time and an HMAC, under a key kept in the database, of
its Message-ID, that time, its From and its recipients. The milter takes it for its own (never
counted, never held by a lock, its own included) only when it comes by sendmail(1) with the
null sender, within ten minutes of issue, and for the first time (NoticeGuard).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate

log = logging.getLogger("postwarden")

NOTICE_HEADER = "X-Postwarden-Notice"
NOTICE_TTL_S = 600  # a notice older than this is not one (pickup retries within a minute)


def _mac(secret: str, message_id: str, issued: int, rcpts: list[str], from_: str) -> str:
    text = "\n".join(
        [message_id.strip(), str(issued), from_.strip().lower(), *sorted(r.lower() for r in rcpts)]
    )
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def notice_token(secret: str, message_id: str, issued: int, rcpts: list[str], from_: str) -> str:
    """The header value: when it was issued and an HMAC of the Message-ID, that time, the From
    and every recipient, under the database's key."""
    return f"t={issued}; mac={_mac(secret, message_id, issued, rcpts, from_)}"


class NoticeGuard:
    """Knows postwarden's own notices: local submission with the null sender, the notifier's
    From, recipients and Message-ID bound by the HMAC, issued within NOTICE_TTL_S, and each
    token taken once. A user who has seen a notice can replay none of it: another recipient,
    another From or a later use fails."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

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
        with self._lock:
            for mid, at in list(self._used.items()):
                if now - at > NOTICE_TTL_S:
                    del self._used[mid]
            if message_id in self._used:
                return False
            self._used[message_id] = now
        return True


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
            # The null sender: a bounce of the notice must not come back as mail to anyone.
            cmd = ["sendmail", "-C", self.postfix_dir, "-f", "", "-i", "--", *self.recipients]
            try:
                res = subprocess.run(
                    cmd, input=self.message(event), capture_output=True, timeout=60, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.error(
                    "%s: lock notice for %s not sent: %s", event.queue_id, event.identity, exc
                )
                self.failed += 1
                continue
            if res.returncode != 0:
                log.error(
                    "%s: lock notice for %s not sent: sendmail exit %d: %s",
                    event.queue_id,
                    event.identity,
                    res.returncode,
                    res.stderr.decode(errors="replace").strip(),
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
