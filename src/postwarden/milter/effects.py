"""Carry out a verdict's plan, in one fixed order, so a failure at any step leaves nothing behind.

The order (policy.model.STEPS):

1. edit, wrap, sign: computed in memory only (the headers as they will leave, the wrapped body,
   the signatures). Postfix has been told nothing yet.
2. postfix: header removals and additions, the new body, the DKIM-Signature headers, the hold
   queue or the reply: what Postfix is told, in the sender's rate transaction, before its
   writes (a message that fails here has written nothing: store/rates.py's group commit).
3. count, lock: written in the sender's rate transaction, not yet committed.
4. commit: the count and the lock become real only now, with the message's outcome final.
5. notify: the lock notice is mailed once its lock is committed.

With [milter].on_error = "tempfail" (the default), the part of step 2 that every verdict
letting the message leave shares (tell_shared: edits, body, signatures, removed recipients,
stream header) is told before the sender's transaction opens (_tells_early); only the hold or
the reply is told inside it. Whatever fails after that, up to the commit, refuses the message,
so Postfix discards what it was told, as it does after a failure at steps 2 to 4.

A failure raises `StepFailed`, naming the step; the transaction is rolled back, so the message
is neither counted nor locked nor notified. `failed_action` says what the message then gets:
never weaker than its verdict (decisions.md, Actions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from datetime import datetime
from typing import Protocol

from postwarden.config import Config
from postwarden.config.keys import LoadedKey
from postwarden.milter.clock import schedule_today
from postwarden.milter.notify import LockEvent, Notice, Notifier
from postwarden.policy import Action, Facts, Verdict, evaluate
from postwarden.policy.html import wrap_bare_html
from postwarden.policy.hygiene import headers_after
from postwarden.policy.model import (
    Count,
    HeaderEdit,
    Hold,
    LockSender,
    Notify,
    NotifySender,
    RemoveRcpt,
    Reply,
    Schedule,
    Sign,
    StreamHeader,
    WarmupCount,
    WrapHtml,
)
from postwarden.policy.registry import ordered
from postwarden.policy.route import Route, route
from postwarden.signing import RelaxedBodyHasher, Signature, sign_all
from postwarden.store import pacing
from postwarden.store.rates import RateTransaction
from postwarden.store.shared import RateBackend, RateTx
from postwarden.store.text import readable

STREAM_HEADER = "X-Postwarden-Stream"  # streams.md: added outside the signature

log = logging.getLogger("postwarden")

MAX_REPLY = 900  # an SMTP reply line stays well under 1000 octets with code and prefix


class Postfix(Protocol):
    """What a plan tells Postfix: the libmilter calls at end-of-message."""

    def chgheader(self, field: str, idx: int, value: str | None) -> None: ...
    def addheader(self, field: str, value: str, idx: int = -1) -> None: ...
    def replacebody(self, chunk: bytes) -> None: ...
    def quarantine(self, reason: str) -> None: ...
    def setreply(self, rcode: str, xcode: str, *msg: str) -> None: ...
    def delrcpt(self, rcpt: str) -> None: ...


@dataclass
class Message:
    """What the callbacks gathered beyond the facts: the header as received, the body hash (and
    the body itself when it may hold bare HTML)."""

    headers: list[tuple[str, str]]
    body_hasher: RelaxedBodyHasher | None = None
    body: bytes | None = None


@dataclass
class Outcome:
    verdict: Verdict
    signatures: list[Signature] = field(default_factory=list)


class StepFailed(Exception):
    def __init__(self, verdict: Verdict, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.verdict = verdict
        self.step = step
        self.cause = cause


# Test hook: a step name -> a callable raising there (the failure-injection tests).
FAULTS: dict[str, Callable[[], None]] = {}


def _at(step: str) -> None:
    fault = FAULTS.get(step)
    if fault is not None:
        fault()


def reply_text(text: str) -> str:
    # libmilter treats the text as a format string and refuses CR or LF; pymilter encodes it
    # strictly, so bytes that are not UTF-8 (an 8-bit MAIL FROM quoted in it) are made readable.
    text = readable(text).replace("\r", " ").replace("\n", " ").replace("%", "%%")
    return text[:MAX_REPLY]


@dataclass
class Prepared:
    edits: list[HeaderEdit]
    body: bytes | None  # the new body, when it was wrapped
    signatures: list[Signature]


def prepare(
    verdict: Verdict, msg: Message, keys: dict[str, list[LoadedKey]], now: datetime
) -> Prepared:
    """Steps edit, wrap and sign: in memory only."""
    step = "edit"
    try:
        _at(step)
        edits = verdict.of(HeaderEdit)
        leaving = headers_after(msg.headers, tuple(edits))
        step = "wrap"
        _at(step)
        new_body = None
        if verdict.of(WrapHtml) and msg.body is not None:
            new_body = wrap_bare_html(leaving, msg.body)
        step = "sign"
        _at(step)
        signatures: list[Signature] = []
        for effect in verdict.of(Sign):
            active = [k for k in keys.get(effect.domain, []) if k.active]
            if not active:
                continue
            if new_body is not None:
                hasher = RelaxedBodyHasher()
                hasher.update(new_body)
            elif msg.body_hasher is not None:
                hasher = msg.body_hasher
            else:
                raise RuntimeError("outbound message without a body hash")
            body_hash = hasher.digest_b64()
            headers = [
                (n.encode("ascii", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for n, v in leaving
            ]
            ts = int(now.timestamp())
            signatures += sign_all(headers, body_hash, active, ts)
        return Prepared(edits, new_body, signatures)
    except Exception as exc:
        raise StepFailed(verdict, step, exc) from exc


def write(verdict: Verdict, tx: RateTx | None, queue_id: str, day: str = "") -> None:
    """Steps count and lock: in the sender's transaction, committed with the outcome. With
    them (streams.md): warm-up counts of `day`, and a paced hold's place on the schedule."""
    step = "count"
    try:
        _at(step)
        warmups, schedules = verdict.of(WarmupCount), verdict.of(Schedule)
        # What can refuse the writes, before any: a failure after one rolls back the
        # transaction this message shares with others (store/rates.py's group commit).
        local = _sqlite(tx) if tx is not None and (warmups or schedules) else None
        if tx is not None and schedules and not queue_id:
            raise RuntimeError("a paced message without a queue id cannot be scheduled")
        if tx is not None:
            for c in verdict.of(Count):
                tx.count(c.rcpts, queue_id)
        step = "lock"
        _at(step)
        if tx is not None:
            for lock in verdict.of(LockSender):
                tx.lock(lock.cap, queue_id)
        if local is not None:  # ---- streams.md ----
            for wc in warmups:
                pacing.add_warmup(local.conn, day, wc.charges)
            for sc in schedules:
                pacing.enqueue(
                    local.conn, queue_id, local.now, verdict.identity, sc.pace, sc.charges
                )
    except Exception as exc:
        raise StepFailed(verdict, step, exc) from exc


def _sqlite(tx: RateTx) -> RateTransaction:
    """Pacing and warm-up write in the SQLite rate transaction (the loader refuses them with
    [store].shared)."""
    if not isinstance(tx, RateTransaction):
        raise RuntimeError("pacing and warm-up need the SQLite rate store, not [store].shared")
    return tx


def tell_postfix(verdict: Verdict, prepared: Prepared, io: Postfix) -> None:
    """Step postfix: what Postfix is told, in the order libmilter needs."""
    tell_shared(verdict, prepared, io)
    tell_outcome(verdict, io)


def tell_shared(verdict: Verdict, prepared: Prepared, io: Postfix) -> None:
    """Step postfix, the part that depends on the message and not on the sender's counts, so
    that it is the same for every verdict that lets the message leave (plan()): the edits, the
    new body, the signatures, the recipients removed, the stream header. A refusal makes
    Postfix discard it."""
    try:
        _at("postfix")
        for edit in prepared.edits:
            if edit.op == "remove":
                io.chgheader(edit.name, edit.index, None)
            elif edit.op == "replace":
                # In place ([headers].repair); plan() puts these before any removal.
                io.chgheader(edit.name, edit.index, edit.value)
            else:
                io.addheader(edit.name, edit.value)
        if prepared.body is not None:
            for i in range(0, len(prepared.body), 65536):
                io.replacebody(prepared.body[i : i + 65536])
        for signature in prepared.signatures:
            # Postfix takes LF-folded header values from a milter and writes CRLF itself.
            io.addheader("DKIM-Signature", signature.value.replace("\r\n", "\n"), 0)
        for removed in verdict.of(RemoveRcpt):
            # A suppressed recipient (feedback.md): out of the envelope, named in the decision.
            io.delrcpt(f"<{removed.address}>")
        for stream in verdict.of(StreamHeader):
            # After signing, at the end: in no h=; Postfix routes on it and strips it on the way out.
            io.addheader(STREAM_HEADER, stream.stream)
    except Exception as exc:
        raise StepFailed(verdict, "postfix", exc) from exc


def tell_outcome(verdict: Verdict, io: Postfix) -> None:
    """Step postfix, the part the sender's counts decide: the hold queue or the reply."""
    try:
        _at("postfix")
        for hold in verdict.of(Hold):
            io.quarantine(reply_text(hold.text))
        for reply in verdict.of(Reply):
            io.setreply(reply.code, reply.status, reply_text(reply.text))
    except Exception as exc:
        raise StepFailed(verdict, "postfix", exc) from exc


def notify(verdict: Verdict, notifier: Notifier, queue_id: str, now: datetime) -> None:
    """Step notify: after the commit. A notice that cannot be sent is logged; the message keeps
    its verdict."""
    for n in verdict.of(Notify):
        log.warning(
            "%s: %s locked: it broke its cap of %s", queue_id or "NOQUEUE", n.identity, n.cap
        )
        try:
            _at("notify")
            notifier.locked(LockEvent(n.identity, n.cap, queue_id, now.isoformat()))
        except Exception as exc:  # noqa: BLE001  (a notice never changes a decided message)
            log.error("%s: lock notice for %s not queued: %s", queue_id, n.identity, exc)
    for t in verdict.of(NotifySender):
        try:
            _at("notify")
            notifier.send(Notice((t.to,), t.subject, t.text, queue_id))
        except Exception as exc:  # noqa: BLE001  (a notice never changes a decided message)
            log.error("%s: notice to %s not queued: %s", queue_id, t.to, exc)


def carry_out(
    facts: Facts,
    msg: Message,
    io: Postfix,
    config: Config,
    rates: RateBackend,
    notifier: Notifier,
    now: datetime,
    route_: Route | None = None,
) -> Outcome:
    """Decide (with the sender's counts read in the transaction that records the message) and
    apply the plan. Raises StepFailed after a verdict, anything else before one."""
    policy = config.policy
    r = route_ or route(facts, policy)
    if not r.outbound or facts.system_notice:
        passed = evaluate(facts, policy, now, None, r)
        tell_postfix(passed, prepare(passed, msg, config.keys, now), io)
        return Outcome(passed)
    windows = sorted({w for _, w, _ in (*r.caps.messages, *r.caps.recipients)})
    # The slow, pure part (header edits, HTML wrap, the signatures) is done before the sender's
    # transaction, under the plan the message gets when it is under its caps; the decision
    # itself is made again inside the transaction with the real counts. Only when the rate
    # check changes the edits or keys (a refusal: nothing to sign) is the work done again.
    # The transaction, one at a time in this process, then holds its lock for microseconds of
    # SQL instead of milliseconds of RSA.
    early = evaluate(facts, policy, now, None, r)
    if early.action >= Action.TEMPFAIL and not _counts_spoke(early):
        # Refused by a check before the rate check, which then never runs: final, with
        # nothing to count or lock, so the sender's store is not even asked (its failure
        # cannot turn a refusal into on_error). A refusal the rate check itself gave on no
        # counts at all (the recipients alone break a cap) carries a lock: the transaction
        # below writes it before its notice goes.
        tell_postfix(early, prepare(early, msg, config.keys, now), io)
        notify(early, notifier, facts.queue_id, now)
        return Outcome(early)
    early_prepared: Prepared | None = None
    early_failure: StepFailed | None = None
    try:
        early_prepared = prepare(early, msg, config.keys, now) if _signs(early) else None
    except StepFailed as exc:
        early_failure = exc  # raised below under the real verdict, which it must not weaken
    told = False
    if early_failure is None and _tells_early(early, config):
        try:
            tell_shared(early, early_prepared or Prepared([], None, []), io)
            told = True
        except StepFailed as exc:
            early_failure = exc  # as above: raised in the transaction, under the real verdict
    verdict: Verdict | None = None
    try:
        with rates.transaction(r.identity, windows, now) as tx:
            state, day = tx.state, ""
            if policy.warmup:  # streams.md: today's warm-up counts, read in this transaction
                day = schedule_today(now).isoformat()
                state = dc_replace(
                    state, warmup_today=day, warmup=pacing.warmup_state(_sqlite(tx).conn, day)
                )
            # Only the checks that read the sender's counts and lock (their READS) run again:
            # the others' reasons are the first run's, over the same facts, policy and time.
            verdict = evaluate(facts, policy, now, state, r, earlier=early)
            same = _same_work(early, verdict)
            if early_failure is not None and (
                same or (early_failure.step == "postfix" and verdict.action in LEAVES)
            ):
                # (A refusal makes Postfix discard what it was told, told or not: its lock
                # and notice stand.)
                raise StepFailed(verdict, early_failure.step, early_failure.cause)
            if told and verdict.action in LEAVES and _shared(early) != _shared(verdict):
                # plan() makes them equal; were they not, Postfix holds the wrong edits.
                raise StepFailed(
                    verdict, "postfix", RuntimeError("told Postfix another plan's edits")
                )
            if early_prepared is not None and same:
                prepared = early_prepared
            else:
                prepared = prepare(verdict, msg, config.keys, now)
            # Postfix is told before the writes: a message that fails here has written
            # nothing, and leaves the transaction it shares with others alone (rates.py).
            if not told:
                tell_shared(verdict, prepared, io)
            tell_outcome(verdict, io)
            write(verdict, tx, facts.queue_id, day)
            _at("commit")
    except StepFailed:
        raise
    except Exception as exc:
        if verdict is None:
            # The sender's counts could not be read: the verdict so far is `early`'s.
            raise StepFailed(early, "count", exc) from exc
        raise StepFailed(verdict, "commit", exc) from exc
    notify(verdict, notifier, facts.queue_id, now)
    return Outcome(verdict, prepared.signatures)


LEAVES = (Action.ACCEPT, Action.QUARANTINE)


def _tells_early(early: Verdict, config: Config) -> bool:
    """Whether the part of the plan every verdict that lets the message leave shares (see
    tell_shared) is told to Postfix before the sender's rate transaction rather than inside it.
    Inside, each libmilter call gives up the GIL and waits to get it back with the transaction,
    and so every other sender's, held: under load most of a decision was that wait. Early, it
    is safe only where whatever fails afterwards refuses the message anyway, so that Postfix
    discards what it was told: [milter].on_error = "tempfail" (the default). With "accept" a
    failure must leave the message unsigned, so all is told inside."""
    return early.action in LEAVES and Action.named(config.daemon.milter.on_error) >= Action.TEMPFAIL


# The checks that read the sender's counts and lock (their READS): their reasons in the first
# evaluation, made before the counts are read, are not final.
_COUNTING = frozenset(c.name for c in ordered() if "rate" in c.reads)


def _counts_spoke(verdict: Verdict) -> bool:
    return any(reason.check in _COUNTING for reason in verdict.reasons)


def _work(verdict: Verdict) -> tuple[object, ...]:
    """The in-memory work a verdict's plan needs (edits, wrap, keys)."""
    return (verdict.of(HeaderEdit), bool(verdict.of(WrapHtml)), verdict.of(Sign))


def _shared(verdict: Verdict) -> tuple[object, ...]:
    """What tell_shared tells Postfix of a verdict's plan: its work, and beside it."""
    return (*_work(verdict), verdict.of(RemoveRcpt), verdict.of(StreamHeader))


def _signs(verdict: Verdict) -> bool:
    return bool(verdict.of(Sign) or verdict.of(HeaderEdit) or verdict.of(WrapHtml))


def _same_work(a: Verdict, b: Verdict) -> bool:
    """Whether two verdicts need the same in-memory work (edits, wrap, keys)."""
    return _work(a) == _work(b)


def failed_action(verdict: Verdict | None, step: str, on_error: Action) -> Action:
    """What a message gets when a step of its plan fails: [milter].on_error where no verdict was
    reached; after one, never weaker than the verdict, and a tempfail where Postfix may already
    hold part of the plan's edits."""
    if verdict is None:
        return on_error
    action = max(verdict.action, on_error)
    if step in ("postfix", "commit") and action in (Action.ACCEPT, Action.QUARANTINE):
        # Postfix holds part or all of the plan's edits and signatures: it must discard the
        # message, never let it leave signed but uncounted.
        return Action.TEMPFAIL
    return action
