"""Lock alerts: mailed to [rate].notify with sendmail(1), from a thread of their own.

The notice passes through Postfix and so through postwarden again. It carries an
X-Postwarden-Notice header, an HMAC of its Message-ID under a key kept in the database, so the
milter knows it for its own: never counted against anyone, never held by a lock (its own
included). A user cannot forge the header without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import subprocess
import threading
import uuid
from dataclasses import dataclass
from email.utils import formatdate

log = logging.getLogger("postwarden")

NOTICE_HEADER = "X-Postwarden-Notice"


def notice_token(secret: str, message_id: str) -> str:
    return hmac.new(secret.encode(), message_id.strip().encode(), hashlib.sha256).hexdigest()


def is_notice(secret: str, message_id: str, token: str) -> bool:
    return bool(secret and message_id and token) and hmac.compare_digest(
        notice_token(secret, message_id), token.strip()
    )


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

    def message(self, event: LockEvent) -> bytes:
        message_id = f"<{uuid.uuid4().hex}.postwarden@{self.hostname}>"
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
            f"From: postwarden <postmaster@{self.hostname}>\n"
            f"To: {', '.join(self.recipients)}\n"
            f"Subject: postwarden: {event.identity} locked ({event.cap})\n"
            f"Date: {formatdate(localtime=False)}\n"
            f"Message-ID: {message_id}\n"
            f"{NOTICE_HEADER}: {notice_token(self.secret, message_id)}\n"
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
                continue
            if res.returncode != 0:
                log.error(
                    "%s: lock notice for %s not sent: sendmail exit %d: %s",
                    event.queue_id,
                    event.identity,
                    res.returncode,
                    res.stderr.decode(errors="replace").strip(),
                )
                continue
            self.sent += 1
            log.info(
                "%s: lock notice for %s mailed to %s",
                event.queue_id,
                event.identity,
                ", ".join(self.recipients),
            )
