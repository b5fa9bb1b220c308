"""evaluate(facts, policy, now, rate) -> Verdict: the one place a message is decided.

Pure: no I/O, no clock, no DNS. Time comes in as `now`, the sender's counts and lock as `rate`
(read by the caller in the transaction that will record the message). The verdict is a plan:
the action and the typed effects it needs, which milter/effects.py applies in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
from postwarden.policy.registry import checks
from postwarden.policy.repair import Repairs, repair_headers
from postwarden.policy.route import Route, route
from postwarden.policy.streams import warmup_charges  # streams.md

# streams.md: a message held only for these is on the releaser's schedule; any other hold (a lock) is not.
PACING_KEYS = frozenset({"pace.paced", "warmup.paced"})
# ----

NO_FROM = FromResult(problem="not read")


@dataclass(frozen=True)
class Context:
    facts: Facts
    policy: Policy
    now: datetime
    route: Route
    header_from: FromResult
    hosted_domain: str | None
    rate: RateState = field(default_factory=RateState)
    prior: tuple[Reason, ...] = ()  # what the checks before this one found
    # [headers].repair: what was repaired (facts.headers already hold the repaired values) and
    # what could not be. Empty for inbound mail and notices.
    repairs: Repairs = field(default_factory=lambda: Repairs(()))

    @property
    def identity(self) -> str:
        return self.route.identity

    @property
    def outbound_rule(self) -> str | None:
        return self.route.outbound_rule


class UndeclaredReason(RuntimeError):
    pass


def evaluate(
    facts: Facts,
    policy: Policy,
    now: datetime,
    rate: RateState | None = None,
    route_: Route | None = None,
) -> Verdict:
    r = route_ or route(facts, policy)
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
    ctx = Context(
        facts=facts,
        policy=policy,
        now=now,
        route=r,
        header_from=parsed_from,
        hosted_domain=hosted,
        rate=rate or RateState(),
        repairs=repairs,
    )
    reasons: list[Reason] = []
    for check in checks():
        found = list(check.fn(replace(ctx, prior=tuple(reasons))))
        for reason in found:
            if reason.check != check.name or reason.code not in check.codes:
                raise UndeclaredReason(f"{check.name} gave undeclared reason {reason.key}")
        reasons.extend(found)
        if any(x.final for x in found):
            break
    action = max((x.action for x in reasons), default=Action.ACCEPT)
    verdict = Verdict(
        action=action,
        reasons=tuple(reasons),
        outbound=r.outbound,
        identity=r.identity,
        from_address=parsed_from.address,
        from_domain=parsed_from.domain,
        hosted_domain=hosted or "",
        policy_hash=policy.hash,
        stream=("bulk" if why_bulk(ctx) else "transactional") if ours else "",  # streams.md
    )
    return replace(verdict, effects=plan(ctx, verdict) if ours else ())


def plan(ctx: Context, verdict: Verdict) -> tuple[Effect, ...]:
    """The effects an outbound verdict needs, in the order they are applied."""
    facts, policy, action = ctx.facts, ctx.policy, verdict.action
    effects: list[Effect] = []
    leaves = action in (Action.ACCEPT, Action.QUARANTINE)
    if leaves and ctx.hosted_domain:
        effects += repair_edits(ctx.repairs.changes)  # in place, before any removal
        effects += header_edits(facts, policy, ctx.now, verdict.from_domain)
        if policy.feedback.feedback_id:  # feedback.md: Gmail's feedback loop, inside h=
            stream = "bulk" if why_bulk(ctx) else "transactional"
            effects += feedback_id_edits(facts, ctx.identity, verdict.from_domain, stream)
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
