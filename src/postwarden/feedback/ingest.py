"""`postwarden feedback ingest`: a report -> what it says -> joined to postwarden's own decision
of the reported message -> stored once (with the raw report), the recipient suppressed for a
complaint, the sender told (at most one notice per [feedback].notice_interval, the rest
gathered into the next one)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlite_utils

from postwarden.config import Config
from postwarden.feedback import arf, suppression
from postwarden.policy.address import header_from
from postwarden.store import feedback as store
from postwarden.store.db import open_db
from postwarden.store.feedback import COMPLAINT_TYPES

if TYPE_CHECKING:  # redis is imported only with [store].shared
    from postwarden.store.shared import RedisRateStore

log = logging.getLogger("postwarden")

# (recipients, subject, body): mails one notice; raises NoticeNotSent when it cannot.
SendNotice = Callable[[list[str], str, str], None]


@dataclass(frozen=True)
class Outcome:
    status: str  # stored | duplicate | ignored
    report_id: int = 0
    feedback_type: str = ""
    recipient: str = ""
    from_domain: str = ""
    suppressed: bool = False
    reason: str = ""

    def line(self) -> str:
        if self.status == "ignored":
            return f"ignored (stored with the reason): {self.reason}"
        verb = "stored" if self.status == "stored" else "already stored"
        what = f"{verb}: {self.feedback_type} report #{self.report_id} about <{self.recipient}>"
        if self.from_domain:
            what += f" from {self.from_domain}"
        if self.suppressed:
            what += ": suppressed"
        elif self.reason:
            what += f": {self.reason}"
        return what


def _rcpts(decision: dict[str, object] | None) -> list[str]:
    """The recipients postwarden's decision recorded (lower-cased)."""
    if decision is None:
        return []
    try:
        value = json.loads(str(decision.get("rcpts") or "[]"))
    except ValueError:
        return []
    return [str(r).lower() for r in value if isinstance(r, str)] if isinstance(value, list) else []


def _dedup_key(rep: arf.Report, normalised: bytes) -> str:
    if rep.problem == "" and rep.message_id and rep.recipient:
        text = f"{rep.feedback_type}\n{rep.recipient}\n{rep.message_id}"
    else:
        text = hashlib.sha256(normalised).hexdigest()
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def ingest(
    db: sqlite_utils.Database,
    config: Config,
    data: bytes,
    *,
    source: str = "stdin",
    now: datetime | None = None,
    send: SendNotice | None = None,
    shared: RedisRateStore | None = None,
) -> Outcome:
    """Store one report. sqlite3 errors (a locked database) propagate: the caller says "retry
    later"; nothing in the report's content raises. The suppression goes to the list in force
    (`shared`, or the one [store].shared names: Redis unreachable raises SharedUnavailable)."""
    now = now or datetime.now(UTC)
    rep = arf.parse(data)
    normalised = arf.normalise(data[: arf.MAX_INPUT])
    policy = config.policy
    decision = None
    from_domain = identity = mail_from = queue_id = ""
    if not rep.problem:
        decision = store.find_decision(db, rep.message_id, rep.queue_ids)
        if decision is not None:
            identity = str(decision["identity"] or "")
            mail_from = str(decision["mail_from"] or "")
            queue_id = str(decision["queue_id"] or "")
            from_domain = header_from([str(decision["header_from"] or "")]).domain
        if not from_domain:
            from_domain = header_from([rep.reported_from]).domain if rep.reported_from else ""
        from_domain = from_domain.lower()
    hosted = policy.hosted_domain(from_domain) if from_domain else None
    reason = rep.problem
    status = "ignored" if rep.problem else "stored"
    suppresses = status == "stored" and rep.feedback_type in COMPLAINT_TYPES
    sent_to = _rcpts(decision)
    if suppresses and decision is not None and not rep.recipient and len(sent_to) == 1:
        # A provider that redacts the recipient (AOL): postwarden's decision knows who it was.
        rep.recipient = sent_to[0]
        rep.warnings.append("the recipient taken from postwarden's decision (one recipient)")
    if suppresses and not hosted:
        reason = f"From domain {from_domain or '(none)'} is not hosted here: nothing suppressed"
        suppresses = False
    elif suppresses and decision is None:
        # Anyone can mail the FBL address: only a report about a message postwarden really
        # sent to that recipient suppresses, so a forged report cannot stop anyone's mail.
        reason = (
            "not joined to a message postwarden sent (Message-ID, queue id): nothing suppressed"
        )
        suppresses = False
    elif suppresses and not rep.recipient:
        reason, suppresses = "no complained recipient in it (redacted?): nothing suppressed", False
    elif suppresses and rep.recipient.lower() not in sent_to:
        reason = f"<{rep.recipient}> is not a recipient of the reported message: nothing suppressed"
        suppresses = False
    elif status == "stored" and not suppresses and not reason:
        reason = f"{rep.feedback_type}: nothing suppressed"
    notice_to = ""
    if suppresses and hosted:
        contact = policy.domains[hosted].contact
        notice_to = (contact or mail_from or rep.original_mail_from or "").lower()
    record = {
        "received_at": now.isoformat(),
        "source": source[:300],
        "dedup_key": _dedup_key(rep, normalised),
        "status": status,
        "reason": reason[:500],
        "feedback_type": rep.feedback_type,
        "reporter": rep.reporter,
        "user_agent": rep.user_agent,
        "recipient": rep.recipient,
        "message_id": rep.message_id,
        "reported_from": rep.reported_from,
        "reported_subject": rep.reported_subject,
        "reported_date": rep.reported_date,
        "original_mail_from": rep.original_mail_from,
        "decision_id": decision["id"] if decision else None,
        "queue_id": queue_id,
        "identity": identity,
        "from_domain": from_domain,
        "mail_from": mail_from,
        "notice_to": notice_to,
        # Everything read from it (shape, warnings, queue ids), beside the raw report.
        "parsed": json.dumps(rep.as_dict(), sort_keys=True),
        "sha256": hashlib.sha256(data).hexdigest(),
        "raw_size": len(data),
        "raw": gzip.compress(data[: arf.MAX_INPUT], 6, mtime=0),
    }
    rid, new = store.insert_report(db, record)
    if not new:
        return Outcome("duplicate", rid, rep.feedback_type, rep.recipient, from_domain)
    if status == "ignored":
        return Outcome("ignored", rid, reason=reason)
    done = False
    if suppresses:
        scope_domain = "" if policy.feedback.scope == "server" else from_domain
        why = f"{rep.feedback_type} report from {rep.reporter or 'a provider'}"
        details = {
            "feedback_type": rep.feedback_type,
            "reporter": rep.reporter,
            "message_id": rep.message_id,
        }
        done = suppression.for_config(db, config, shared).suppress(
            rep.recipient, scope_domain, now.isoformat(), "feedback", why, "", rid, details
        )
    if send is not None:
        flush_notices(db, config, now, send)  # this complaint's notice, and any now due
        if suppresses:
            _alert(db, config, now, from_domain, send, shared)
    return Outcome("stored", rid, rep.feedback_type, rep.recipient, from_domain, done, reason)


def _alert(
    db: sqlite_utils.Database,
    config: Config,
    now: datetime,
    domain: str,
    send: SendNotice,
    shared: RedisRateStore | None = None,
) -> None:
    """A complaint that lifts its domain above [feedback].alert_rate alerts [rate].notify (at
    most once a day, as `feedback stats` does)."""
    from postwarden.feedback.stats import alerts, rates

    try:
        alerts(db, config, rates(db, config, now, domain, shared), now, send)
    except Exception as exc:  # noqa: BLE001  (an alert not sent is tried again next time)
        log.error("complaint-rate alert for %s not sent: %s", domain, exc)


def flush_notices(
    db: sqlite_utils.Database, config: Config, now: datetime, send: SendNotice
) -> int:
    """Mail each sender whose complaints are not yet told, unless it was mailed within
    [feedback].notice_interval (those wait for the next one). Returns the notices sent."""
    interval = timedelta(seconds=config.policy.feedback.notice_interval_s)
    sent = 0
    for notice_to, items in store.pending_notices(db).items():
        last = store.last_notice(db, notice_to)
        if last is not None and now - datetime.fromisoformat(last) < interval:
            continue
        subject, body = complaint_notice(items, config)
        try:
            send([notice_to], subject, body)
        except Exception as exc:  # noqa: BLE001  (a notice not sent waits for the next ingest)
            log.error("complaint notice to %s not sent: %s", notice_to, exc)
            continue
        store.notice_sent(db, notice_to, [int(i["id"]) for i in items], now.isoformat())
        sent += 1
    return sent


def complaint_notice(items: list[dict[str, object]], config: Config) -> tuple[str, str]:
    n = len(items)
    first = items[0]
    subject = (
        f"postwarden: {first['recipient']} reported your mail as spam"
        if n == 1
        else f"postwarden: {n} recipients reported your mail as spam"
    )
    scope = config.policy.feedback.scope
    lines = [
        "A recipient's mailbox provider sent a complaint (a feedback-loop report) about mail",
        "sent from this server. postwarden has stopped mailing the address"
        + (" from your domain." if scope == "domain" else " from this server."),
        "",
    ]
    for item in items:
        lines += [
            f"Complained: {item['recipient']}  ({item['feedback_type']} report from"
            f" {item['reporter'] or 'a provider'}, received {str(item['received_at'])[:19]}Z)",
            f"  About the message: Message-ID {item['message_id'] or '(none)'}",
            f"    Date: {item['reported_date'] or '(none)'}",
            f"    Subject: {item['reported_subject'] or '(none)'}",
            f"  {item['recipient']} is now suppressed: mail to it is refused.",
            "",
        ]
    lines += [
        "What to do: remove these addresses from your lists, and send only mail the",
        "recipients asked for. If a complaint is a mistake, your administrator can lift it:",
        f"  postwarden suppression remove {first['recipient']}"
        + (f" --domain {first['from_domain']}" if scope == "domain" else ""),
    ]
    return subject, "\n".join(lines) + "\n"


def notice_sender(db: sqlite_utils.Database, config: Config) -> SendNotice:
    """Notices mailed as lock notices are: the bound X-Postwarden-Notice token under the
    database's key, to the notice service (or sendmail(1)); the milter never counts them."""
    import socket

    from postwarden.milter.notify import build_notice, submit
    from postwarden.store import daemon_state

    secret = daemon_state.notice_secret(db)
    hostname = config.daemon.server.hostname or socket.getfqdn()
    postfix_dir = config.daemon.postfix.config_directory

    def send(recipients: list[str], subject: str, body: str) -> None:
        submit(postfix_dir, recipients, build_notice(secret, hostname, recipients, subject, body))

    return send


class NoticeFlusher(threading.Thread):
    """In the daemon: complaints gathered while their sender's notice_interval ran are mailed
    once it has passed, even when no later report comes in to carry them."""

    def __init__(self, get_config: Callable[[], Config], period: float = 60) -> None:
        super().__init__(name="postwarden-feedback-notices", daemon=True)
        self.get_config = get_config
        self.period = period
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.wait_s()):
            self.flush_once()

    def wait_s(self) -> float:
        return float(min(self.period, self.get_config().policy.feedback.notice_interval_s))

    def flush_once(self, now: datetime | None = None) -> int:
        config = self.get_config()
        try:
            db = open_db(config.daemon.store.database)
        except (sqlite3.Error, OSError) as exc:
            log.error("complaint notices: the database: %s", exc)
            return 0
        try:
            return flush_notices(db, config, now or datetime.now(UTC), notice_sender(db, config))
        except sqlite3.Error as exc:
            log.error("complaint notices: the database: %s; trying again later", exc)
            return 0
        finally:
            db.conn.close()
