"""What every milter connection shares: the policy in force, the writer, the log."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from postwarden.config import Config
from postwarden.config.models import Policy
from postwarden.metrics import Metrics
from postwarden.milter.notify import NOTICE_HEADER, NoticeGuard, Notifier, UsedTokens
from postwarden.policy.model import Facts, Verdict
from postwarden.signing import Signature
from postwarden.store.feedback import RcptLookup
from postwarden.store.shared import RateBackend
from postwarden.store.text import readable
from postwarden.store.writer import Writer
from postwarden.textsafe import logfield

log = logging.getLogger("postwarden")


@dataclass
class Runtime:
    config: Config
    writer: Writer
    rates: RateBackend  # store.rates.RateStore, or store.shared.RedisRateStore ([store].shared)
    notifier: Notifier
    notice_secret: str = ""
    # Suppressed recipients (feedback.md), looked up at RCPT and end-of-message; None: none.
    # store.feedback.SuppressionLookup, or [store].shared's RedisSuppressions (every server's).
    suppressions: RcptLookup | None = None
    used_tokens: UsedTokens | None = None  # [store].shared: the notices used on every server
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    guard: NoticeGuard = field(init=False)
    # [metrics] (issue 20): counters raised once per decision in record(); gauges at scrape.
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.guard = NoticeGuard(self.notice_secret, self.used_tokens)
        self.metrics.hosted(self.config.policy.domains)

    @property
    def policy(self) -> Policy:
        # One attribute read: a reload swaps `config` whole, so a message sees one policy.
        return self.config.policy

    def is_notice(self, headers: list[tuple[str, str]], mail_from: str, rcpts: list[str]) -> bool:
        """postwarden's own notice: see NoticeGuard. Taken once (a second look says no)."""
        token = message_id = from_ = ""
        for name, value in headers:
            lname = name.lower()
            if lname == NOTICE_HEADER.lower():
                if token:
                    return False  # two tokens: not ours
                token = value
            elif lname == "message-id":
                message_id = value
            elif lname == "from":
                from_ = value
        if not token or from_.strip() != self.notifier.from_header():
            return False
        return self.guard.check(token, message_id, from_, mail_from, rcpts, time.time())

    def message_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def message_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def record(
        self,
        facts: Facts,
        verdict: Verdict,
        when: datetime,
        duration_ms: float,
        signatures: list[Signature] | None = None,
    ) -> None:
        headers = {k.lower(): v for k, v in reversed(facts.headers)}
        row: dict[str, Any] = {
            "time": when.astimezone(UTC).isoformat(),
            "hostname": facts.hostname,
            "queue_id": facts.queue_id,
            "client_addr": facts.client_addr,
            "client_name": facts.client_name,
            "helo": facts.helo,
            "identity": verdict.identity,
            "mail_from": facts.mail_from,
            "rcpts": json.dumps(list(facts.rcpts)),
            "header_from": headers.get("from", ""),
            "subject": headers.get("subject", ""),
            "message_id": headers.get("message-id", ""),
            "size": facts.size,
            "outbound": int(verdict.outbound),
            "action": str(verdict.action),
            "reasons": json.dumps(
                [
                    {"check": r.check, "code": r.code, "action": str(r.action), "text": r.text}
                    for r in verdict.reasons
                ]
            ),
            "signatures": json.dumps([s.record() for s in signatures or []]),
            "policy_hash": verdict.policy_hash,
            "duration_ms": round(duration_ms, 3),
            "error": f"{verdict.step}: {verdict.error}" if verdict.step else verdict.error,
            "headers": header_block(facts.headers),
            "stream": verdict.stream,  # streams.md
        }
        self.writer.insert("decisions", row)
        self.metrics.observe(facts, verdict, duration_ms, signatures or [])
        log.info(readable(log_line(facts, verdict, duration_ms, signatures or [])))


HEADERS_KEPT = 16_384  # characters of the header block kept with each decision


def header_block(headers: tuple[tuple[str, str], ...]) -> str:
    text = "\n".join(f"{name}: {value}" for name, value in headers)
    return text if len(text) <= HEADERS_KEPT else text[:HEADERS_KEPT] + "\n[... cut]"


def log_line(
    facts: Facts, verdict: Verdict, duration_ms: float, signatures: list[Signature]
) -> str:
    """One line per decision, beginning with the queue id as Postfix's and OpenDKIM's do."""
    parts = [
        f"{facts.queue_id or 'NOQUEUE'}: {verdict.action}",
        # Every value a sender wrote is one field, quoted when it is not plain: a MAIL FROM with
        # spaces or "=" cannot forge another field, nor put escapes on a terminal.
        f"identity={logfield(verdict.identity)}",
        f"from={logfield('<' + verdict.from_address + '>')}",
        f"mail_from={logfield('<' + facts.mail_from + '>')}",
        f"rcpts={len(facts.rcpts)}",
        f"size={facts.size}",
    ]
    if verdict.stream:
        parts.append(f"stream={verdict.stream}")  # streams.md
    if verdict.reasons:
        parts.append("reasons=" + ",".join(r.key for r in verdict.reasons))
    if signatures:
        parts.append("signed=" + ",".join(f"{s.domain}/{s.selector}" for s in signatures))
    parts.append(f"policy={verdict.policy_hash}")
    parts.append(f"ms={duration_ms:.2f}")
    reply = verdict.reply()
    if verdict.error:
        parts.append(f"error={logfield(verdict.step + ': ' + verdict.error)}")
    elif reply:
        parts.append(f"text={logfield(reply[2])}")
    return " ".join(parts)
