"""evaluate(facts, policy, now, rate) -> Verdict: the one place a message is decided.

Pure: no I/O, no clock, no DNS. Time comes in as `now`, the sender's counts and lock as `rate`
(read by the caller in the transaction that will record the message). The verdict is a plan:
the action and the typed effects it needs, which milter/effects.py applies in a fixed order.

milter/effects.py decides an outbound message twice: without the sender's counts (to sign
outside the rate transaction), then inside the transaction with them. The second call passes
the first verdict as `earlier`, and only the checks whose READS name the rate state run again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from postwarden.config.models import Policy
from postwarden.policy import checks as _checks  # noqa: F401  (registers every check)
from postwarden.policy.address import FromResult, header_from
from postwarden.policy.checks.bulk import why_bulk  # streams.md
from postwarden.policy.hygiene import feedback_id_edits, header_edits, removed_names, repair_edits
from postwarden.policy.model import (  # streams.md
    Action,
    Count,
    Effect,
    Facts,
    Hold,
    RateState,
    Reason,
    RemoveRcpt,
    Reply,
    Schedule,
    Sign,
    StreamHeader,
    Verdict,
    WarmupCount,
    WrapHtml,
)
from postwarden.policy.registry import ordered
from postwarden.policy.repair import Repairs, repair_headers
from postwarden.policy.route import Route, route
from postwarden.policy.streams import warmup_charges  # streams.md

# streams.md: a message held only for these is on the releaser's schedule; any other hold (a lock) is not.
PACING_KEYS = frozenset({"pace.paced", "warmup.paced"})
# ----

NO_FROM = FromResult(problem="not read")
# What of the context a check may read beyond the message itself, declared in its module's
# READS (registry.py): checks that read neither are run once per message, even when the
# caller decides twice (milter/effects.py: outside, then inside the rate transaction).
READS = frozenset({"rate", "prior"})


class UndeclaredReason(RuntimeError):
    pass


class UndeclaredRead(RuntimeError):
    """A check read ctx.rate or ctx.prior without declaring it in its READS: its earlier
    result could be reused when it must not be."""


class Context:
    """What a check sees: the message (facts as repaired, its route, parsed From, hosted
    domain, repairs), the policy and the time; and, only for a check that declares them in its
    READS, the sender's rate state and the reasons of the checks before it."""

    __slots__ = (
        "_bulk",
        "_edits",
        "_prior",
        "_rate",
        "_reader",
        "facts",
        "header_from",
        "hosted_domain",
        "now",
        "policy",
        "repairs",
        "route",
    )

    def __init__(
        self,
        facts: Facts,
        policy: Policy,
        now: datetime,
        route: Route,
        header_from: FromResult,
        hosted_domain: str | None,
        rate: RateState | None = None,
        prior: tuple[Reason, ...] = (),
        repairs: Repairs | None = None,
    ) -> None:
        self.facts = facts
        self.policy = policy
        self.now = now
        self.route = route
        self.header_from = header_from
        self.hosted_domain = hosted_domain
        # [headers].repair: what was repaired (facts.headers already hold the repaired values)
        # and what could not be. Empty for inbound mail and notices.
        self.repairs = repairs if repairs is not None else Repairs(facts.headers)
        self._rate: RateState | None = rate if rate is not None else RateState()
        self._prior: tuple[Reason, ...] | None = prior
        self._reader = ""  # the check being run, for UndeclaredRead
        self._bulk: str | None = None
        self._edits: tuple[Effect, ...] | None = None

    @property
    def rate(self) -> RateState:
        """The sender's lock and counts, read in the transaction that records the message."""
        if self._rate is None:
            raise UndeclaredRead(f"check {self._reader} reads ctx.rate: declare it in READS")
        return self._rate

    @property
    def prior(self) -> tuple[Reason, ...]:
        """What the checks before this one found."""
        if self._prior is None:
            raise UndeclaredRead(f"check {self._reader} reads ctx.prior: declare it in READS")
        return self._prior

    @property
    def identity(self) -> str:
        return self.route.identity

    @property
    def outbound_rule(self) -> str | None:
        return self.route.outbound_rule

    @property
    def bulk_reason(self) -> str:
        """why_bulk(self), worked out once: the bulk, streams and pace checks and the plan ask."""
        if self._bulk is None:
            self._bulk = why_bulk(self)
        return self._bulk

    def copy(self) -> Context:
        new = Context.__new__(Context)
        for name in Context.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        return new


@dataclass(frozen=True)
class Evaluation:
    """What evaluating a message worked out that a second evaluation of the same facts,
    policy, time and route with other rate state may reuse (evaluate(..., earlier=)): the
    prepared context (repairs, parsed From, header edits) and each check's reasons, by name."""

    facts: Facts
    policy: Policy
    now: datetime
    route: Route
    ctx: Context
    found: Mapping[str, tuple[Reason, ...]]

    def reusable_for(
        self, facts: Facts, policy: Policy, now: datetime, route_: Route | None
    ) -> bool:
        return (
            (facts is self.facts or facts == self.facts)
            and policy is self.policy
            and now == self.now
            and (route_ is None or route_ is self.route or route_ == self.route)
        )


def evaluate(
    facts: Facts,
    policy: Policy,
    now: datetime,
    rate: RateState | None = None,
    route_: Route | None = None,
    earlier: Verdict | None = None,
) -> Verdict:
    """The verdict on a message. With `earlier` (the verdict evaluate gave the same facts,
    policy, time and route, e.g. without the sender's real counts) only the checks that may
    find otherwise are run again: those whose READS has "rate", and those whose READS has
    "prior" once a check before them found something else; the others' reasons are
    `earlier`'s. The verdict is the one a fresh evaluate gives (tests/unit/test_engine_reuse.py
    holds it to that); an `earlier` of other facts, policy, time or route is ignored."""
    work = earlier.work if earlier is not None else None
    if not isinstance(work, Evaluation) or not work.reusable_for(facts, policy, now, route_):
        work = None
    if work is not None:
        r, ctx = work.route, work.ctx.copy()
    else:
        r = route_ or route(facts, policy)
        ctx = _context(facts, policy, now, r)
    state = rate or RateState()
    before = work.found if work is not None else {}
    found: dict[str, tuple[Reason, ...]] = {}
    reasons: list[Reason] = []
    changed = False  # whether a check before this one found other reasons than in `earlier`
    for check in ordered():
        reads = check.reads
        old = before.get(check.name)
        if old is not None and "rate" not in reads and not ("prior" in reads and changed):
            got = old
        else:
            ctx._reader = check.name
            ctx._rate = state if "rate" in reads else None
            ctx._prior = tuple(reasons) if "prior" in reads else None
            got = tuple(check.fn(ctx))
            for reason in got:
                if reason.check != check.name or reason.code not in check.codes:
                    raise UndeclaredReason(f"{check.name} gave undeclared reason {reason.key}")
            changed = changed or got != old
        found[check.name] = got
        reasons.extend(got)
        if got and any(x.final for x in got):
            break
    ctx._reader, ctx._rate, ctx._prior = "", None, None
    ours = r.outbound and not facts.system_notice
    parsed_from, hosted = ctx.header_from, ctx.hosted_domain
    action = max((x.action for x in reasons), default=Action.ACCEPT)
    evaluation = Evaluation(facts, policy, now, r, ctx, found)

    def verdict_with(effects: tuple[Effect, ...]) -> Verdict:
        return Verdict(
            action=action,
            reasons=all_reasons,
            outbound=r.outbound,
            identity=r.identity,
            from_address=parsed_from.address,
            from_domain=parsed_from.domain,
            hosted_domain=hosted or "",
            policy_hash=policy.hash,
            effects=effects,
            stream=stream,
            work=evaluation,
        )

    all_reasons = tuple(reasons)
    stream = ("bulk" if ctx.bulk_reason else "transactional") if ours else ""  # streams.md
    verdict = verdict_with(())
    return verdict_with(plan(ctx, verdict)) if ours else verdict


def _context(facts: Facts, policy: Policy, now: datetime, r: Route) -> Context:
    """The context every check shares: the headers repaired, the From parsed."""
    ours = r.outbound and not facts.system_notice
    # Inbound mail and postwarden's own notices are passed before anything is parsed: a hostile
    # From on port 25 costs nothing.
    repairs = Repairs(facts.headers)
    if ours:
        # Repaired before anything reads them: the From parser judges the From as it will leave.
        repairs = repair_headers(
            facts.headers,
            smtputf8=facts.smtputf8,
            enabled=policy.headers.repair,
            skip=removed_names(policy),
        )
        if repairs.changes:
            facts = replace(facts, headers=repairs.headers)
    parsed_from = header_from(facts.header_values("From")) if ours else NO_FROM
    hosted = policy.hosted_domain(parsed_from.domain) if parsed_from.domain else None
    return Context(facts, policy, now, r, parsed_from, hosted, repairs=repairs)


def plan(ctx: Context, verdict: Verdict) -> tuple[Effect, ...]:
    """The effects an outbound verdict needs, in the order they are applied."""
    facts, policy, action = ctx.facts, ctx.policy, verdict.action
    effects: list[Effect] = []
    leaves = action in (Action.ACCEPT, Action.QUARANTINE)
    if leaves and ctx.hosted_domain:
        effects += _edits(ctx, verdict.from_domain)
        if policy.headers.wrap_bare_html:
            effects.append(WrapHtml())
        effects.append(Sign(ctx.hosted_domain))
    if leaves:
        # A rejected or tempfailed message uses none of the sender's allowance; a held one does.
        # Suppressed recipients removed from it (feedback.md) get nothing and are not counted.
        removed = sum(isinstance(e, RemoveRcpt) for r in verdict.reasons for e in r.effects)
        effects.append(Count(ctx.identity, len(facts.rcpts) - removed))
    for reason in verdict.reasons:
        effects += reason.effects  # a lock and its notice
    if action == Action.QUARANTINE:
        effects.append(Hold("postwarden: " + "; ".join(x.key for x in verdict.deciding_reasons())))
    effects += _stream_effects(ctx, verdict)
    reply = verdict.reply()
    if reply is not None:
        effects.append(Reply(*reply))
    return tuple(effects)


def _edits(ctx: Context, from_domain: str) -> tuple[Effect, ...]:
    """The header edits before signing: they depend on the message alone (not on the verdict),
    so a second evaluation of it reuses them."""
    if ctx._edits is None:
        facts, policy = ctx.facts, ctx.policy
        edits: list[Effect] = []
        edits += repair_edits(ctx.repairs.changes)  # in place, before any removal
        edits += header_edits(facts, policy, ctx.now, from_domain)
        if policy.feedback.feedback_id:  # feedback.md: Gmail's feedback loop, inside h=
            stream = "bulk" if ctx.bulk_reason else "transactional"
            edits += feedback_id_edits(facts, ctx.identity, from_domain, stream)
        ctx._edits = tuple(edits)
    return ctx._edits


def _stream_effects(ctx: Context, verdict: Verdict) -> list[Effect]:
    """streams.md: the stream header on mail that leaves (outside the signature); mail held
    only to be paced goes on the releaser's schedule; accepted mail counts against warm-up."""
    out: list[Effect] = []
    action = verdict.action
    if action not in (Action.ACCEPT, Action.QUARANTINE):
        return out
    out.append(StreamHeader("bulk" if verdict.stream == "bulk" else "transactional"))
    charges = warmup_charges(ctx.policy, verdict.from_domain, ctx.facts.rcpts)
    deciding = {r.key for r in verdict.deciding_reasons()}
    if action == Action.QUARANTINE and deciding <= PACING_KEYS:
        out.append(Schedule("pace.paced" in deciding, charges))
    elif action == Action.ACCEPT and charges:
        out.append(WarmupCount(charges))
    return out
