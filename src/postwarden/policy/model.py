"""The engine's inputs and outputs: plain, immutable values."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, TypeVar

E = TypeVar("E")


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
class Suppression:
    """An active suppression (feedback.md): `address` gets no mail from `domain` ("" = every
    domain on the server), since `since`, for `reason`."""

    address: str
    domain: str
    since: str  # ISO time
    reason: str

    def applies_to(self, domain: str) -> bool:
        """Whether it stops mail from `domain` (its own, or every domain's)."""
        return self.domain in ("", domain.lower())


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
    mime_problem: str = ""  # why the body's MIME structure cannot be taken (too deep), or ""
    # The active suppressions of these recipients (any domain), read by the adapter at
    # end-of-message; the suppression check keeps those for the header From domain.
    suppressed: tuple[Suppression, ...] = ()
    # The server's key for Feedback-ID sender tags (feedback.md): stable, not reversible.
    tag_key: str = field(default="", repr=False)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in order."""
        return list(self._by_name.get(name.lower(), ()))

    def has_header(self, name: str) -> bool:
        return name.lower() in self._by_name

    @cached_property
    def _by_name(self) -> dict[str, tuple[str, ...]]:
        """The headers by lower-cased name, built once per Facts (not a field: no part of
        ==, repr or replace(); a replaced Facts builds its own)."""
        index: dict[str, list[str]] = {}
        for k, v in self.headers:
            index.setdefault(k.lower(), []).append(v)
        return {k: tuple(v) for k, v in index.items()}


# ---- the plan: typed effects, applied in a fixed order by milter/effects.py --------------------


@dataclass(frozen=True)
class HeaderEdit:
    """One header change made before signing: remove the index-th (1-based) copy of `name`, or
    add `name: value` at the end of the header, or replace the index-th copy's value in place
    ([headers].repair; chgheader's index is per name)."""

    op: Literal["remove", "add", "replace"]
    name: str
    index: int = 0
    value: str = ""


@dataclass(frozen=True)
class WrapHtml:
    """Wrap bare text/html parts in <html><body> before signing."""


@dataclass(frozen=True)
class Sign:
    """Sign with every active key of this hosted domain, over the message as it will leave."""

    domain: str


@dataclass(frozen=True)
class Count:
    """Count this message against the sender's windows (committed only with the outcome)."""

    identity: str
    rcpts: int


@dataclass(frozen=True)
class LockSender:
    """Lock the sender: the cap it broke."""

    identity: str
    cap: str


@dataclass(frozen=True)
class Notify:
    """Mail [rate].notify that the sender was locked (only once the lock is committed)."""

    identity: str
    cap: str


@dataclass(frozen=True)
class Hold:
    """Into Postfix's hold queue, with these reason keys."""

    text: str


@dataclass(frozen=True)
class Reply:
    """Refuse with this SMTP reply (reject or tempfail)."""

    code: Literal["550", "451"]
    status: str
    text: str


# ---- streams, pacing and warm-up (streams.md) ----


@dataclass(frozen=True)
class StreamHeader:
    """X-Postwarden-Stream: bulk|transactional, added in the postfix step after the
    DKIM-Signature headers, so it is in no signature's h= (Postfix routes on it and removes it)."""

    stream: Literal["bulk", "transactional"]


# One warm-up charge: (warm-up key: a From domain or "server", provider group, recipients).
Charge = tuple[str, str, int]


@dataclass(frozen=True)
class Schedule:
    """Held only to be paced: put it on the releaser's schedule (in the rate transaction)."""

    pace: bool  # bulk mail paced at [streams.bulk].pace
    charges: tuple[Charge, ...] = ()  # counted against warm-up when released


@dataclass(frozen=True)
class WarmupCount:
    """An accepted message's recipients, counted against today's warm-up allowance."""

    charges: tuple[Charge, ...]


# ---- feedback loops (feedback.md) ----


@dataclass(frozen=True)
class RemoveRcpt:
    """Remove a suppressed recipient from the envelope (milter delrcpt, the postfix step)."""

    address: str


@dataclass(frozen=True)
class NotifySender:
    """Mail the envelope sender which recipients were removed, and why (after the commit)."""

    to: str
    subject: str
    text: str


Effect = (
    HeaderEdit
    | WrapHtml
    | Sign
    | Count
    | LockSender
    | Notify
    | Hold
    | Reply
    | StreamHeader
    | Schedule
    | WarmupCount
    | RemoveRcpt
    | NotifySender
)

# The order effects are applied in (milter/effects.py): everything that only computes first,
# then what Postfix is told, then the store's writes (uncommitted), then the commit, then mail.
STEPS = ("edit", "wrap", "sign", "postfix", "count", "lock", "commit", "notify")


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
    # Warm-up (streams.md): the schedule's day ("YYYY-MM-DD", UTC) and per (key, group) the
    # recipients counted today and the recipients of held messages still waiting.
    warmup_today: str = ""
    warmup: tuple[tuple[str, str, int, int], ...] = ()  # (key, group, sent today, waiting)

    def warmup_of(self, key: str, group: str) -> tuple[int, int]:
        for k, g, sent, waiting in self.warmup:
            if (k, g) == (key, group):
                return sent, waiting
        return 0, 0

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
    detail: str = ""  # a value for the log, e.g. the cap that broke ("messages 20/minute")
    effects: tuple[Effect, ...] = ()  # what this finding needs done (a lock, a notice)

    @property
    def key(self) -> str:
        return f"{self.check}.{self.code}"


@dataclass(frozen=True)
class Verdict:
    """The decision and its plan: the action, why, and the ordered effects it needs."""

    action: Action
    reasons: tuple[Reason, ...] = ()
    outbound: bool = False
    identity: str = ""
    from_address: str = ""
    from_domain: str = ""
    hosted_domain: str = ""  # the [domains] entry whose keys sign this message
    policy_hash: str = ""
    effects: tuple[Effect, ...] = ()
    error: str = ""
    step: str = ""  # the step of the plan that failed (STEPS), or "decide"
    stream: str = ""  # outbound mail: "bulk" or "transactional" (streams.md)
    # What evaluate() worked out on the way (engine.Evaluation), so that evaluating the same
    # message again with other rate state (evaluate(..., earlier=this)) runs only the checks
    # that read it. No part of the decision: not compared, not shown.
    work: object = field(default=None, compare=False, repr=False)

    def deciding_reasons(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.action == self.action)

    def of(self, kind: type[E]) -> list[E]:
        """The effects of one kind, in plan order (asked about twenty times per message by
        milter/effects.py and the decision row: worked out once per kind)."""
        hit = self._of_kind.get(kind)
        if hit is None:
            hit = self._of_kind[kind] = tuple(e for e in self.effects if isinstance(e, kind))
        return list(hit)  # type: ignore[arg-type]

    @cached_property
    def _of_kind(self) -> dict[type, tuple[object, ...]]:
        return {}

    @property
    def edits(self) -> tuple[HeaderEdit, ...]:
        return tuple(self.of(HeaderEdit))

    @property
    def count(self) -> bool:
        return bool(self.of(Count))

    @property
    def lock_cap(self) -> str:
        locks = self.of(LockSender)
        return locks[0].cap if locks else ""

    def reply(self) -> tuple[Literal["550", "451"], str, str] | None:
        """The SMTP reply for a reject or tempfail: code, enhanced code, text."""
        text = "; ".join(r.text for r in self.deciding_reasons()) or "message refused by policy"
        if self.action == Action.REJECT:
            return "550", "5.7.1", text
        if self.action == Action.TEMPFAIL:
            return "451", "4.7.1", text
        return None
