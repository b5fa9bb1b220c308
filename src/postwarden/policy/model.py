"""The engine's inputs and outputs: plain, immutable values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class Action(enum.IntEnum):
    """Ordered by strictness: the highest wins (decisions.md, Actions)."""

    ACCEPT = 0
    QUARANTINE = 1
    TEMPFAIL = 2
    REJECT = 3

    @classmethod
    def named(cls, name: str) -> Action:
        return cls[name.upper()]

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Facts:
    """What the milter saw of one message. Gathered by callbacks; judged by evaluate()."""

    queue_id: str = ""
    hostname: str = ""  # Postfix's myhostname (macro j)
    client_addr: str = ""
    client_port: int = 0
    client_name: str = ""
    helo: str = ""
    daemon_name: str = ""
    auth_login: str = ""  # {auth_authen}: the SASL login, empty when none
    local_submission: bool = False  # sendmail(1) through pickup (non_smtpd_milters)
    local_user: str = ""  # the submitting local user where Postfix reveals it
    mail_from: str = ""  # envelope sender without <>; "" is the null sender
    rcpts: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    size: int = 0  # header and body octets as the milter saw them
    # postwarden's own notice (a lock alert), proven by its HMAC header: never counted or held.
    system_notice: bool = False
    smtputf8: bool = False  # MAIL FROM ... SMTPUTF8: 8-bit headers are allowed

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass(frozen=True)
class HeaderEdit:
    """One header change the adapter makes before signing: remove the index-th (1-based) copy of
    `name`, or add `name: value` at the end of the header."""

    op: Literal["remove", "add"]
    name: str
    index: int = 0
    value: str = ""


@dataclass(frozen=True)
class Lock:
    identity: str
    locked_at: str  # ISO time
    cap: str  # which cap broke, e.g. "messages 20/minute"
    queue_id: str  # the message that broke it


@dataclass(frozen=True)
class RateState:
    """What the store knows of one sender, read in the same transaction that will record the
    message: its lock, and per window (seconds) the messages and recipients already counted."""

    lock: Lock | None = None
    counts: tuple[tuple[int, int, int], ...] = ()  # (window, messages, recipients)

    def in_window(self, window: int) -> tuple[int, int]:
        for w, messages, recipients in self.counts:
            if w == window:
                return messages, recipients
        return 0, 0


@dataclass(frozen=True)
class Reason:
    check: str
    code: str
    action: Action
    text: str  # a sentence telling the sender what is wrong and what to do
    final: bool = False  # no later check runs (mail that is not ours to judge)
    detail: str = ""  # a value for the adapter, e.g. the cap that broke ("messages 20/minute")

    @property
    def key(self) -> str:
        return f"{self.check}.{self.code}"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reasons: tuple[Reason, ...] = ()
    outbound: bool = True
    identity: str = ""
    from_address: str = ""
    from_domain: str = ""
    hosted_domain: str = ""  # the [domains] entry whose keys sign this message
    policy_hash: str = ""
    error: str = ""
    # Rate effects the adapter records in the same transaction as the read: count this message
    # against `identity`, and lock it (the cap that broke) when `lock_cap` is set.
    count: bool = False
    lock_cap: str = ""
    edits: tuple[HeaderEdit, ...] = ()  # applied, in order, before signing
    wrap_html: bool = False  # wrap bare text/html parts, before signing

    def deciding_reasons(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.action == self.action)

    def reply(self) -> tuple[Literal["550", "451"], str, str] | None:
        """The SMTP reply for a reject or tempfail: code, enhanced code, text."""
        text = "; ".join(r.text for r in self.deciding_reasons()) or "message refused by policy"
        if self.action == Action.REJECT:
            return "550", "5.7.1", text
        if self.action == Action.TEMPFAIL:
            return "451", "4.7.1", text
        return None
