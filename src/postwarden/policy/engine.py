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
from postwarden.policy.checks.bulk import why_bulk
from postwarden.policy.hygiene import feedback_id_edits, header_edits
from postwarden.policy.model import (
    Action,
    Count,
    Effect,
    Facts,
    Hold,
    RateState,
    Reason,
    RemoveRcpt,
    Reply,
    Sign,
    Verdict,
    WrapHtml,
)
from postwarden.policy.registry import checks
from postwarden.policy.route import Route, route

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
    )
    return replace(verdict, effects=plan(ctx, verdict) if ours else ())


def plan(ctx: Context, verdict: Verdict) -> tuple[Effect, ...]:
    """The effects an outbound verdict needs, in the order they are applied."""
    facts, policy, action = ctx.facts, ctx.policy, verdict.action
    effects: list[Effect] = []
    leaves = action in (Action.ACCEPT, Action.QUARANTINE)
    if leaves and ctx.hosted_domain:
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
    reply = verdict.reply()
    if reply is not None:
        effects.append(Reply(*reply))
    return tuple(effects)
