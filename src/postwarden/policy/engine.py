"""evaluate(facts, policy, now) -> Verdict: the one place a message is decided.

Pure: no I/O, no clock, no DNS. Time comes in as `now`; anything looked up outside (rate
counters, locks) will come in as arguments too. The milter adapter applies the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from postwarden.config.models import Policy
from postwarden.policy import checks as _checks  # noqa: F401  (registers every check)
from postwarden.policy.address import FromResult, header_from
from postwarden.policy.hygiene import header_edits
from postwarden.policy.identity import identity, matches_outbound
from postwarden.policy.model import Action, Facts, RateState, Reason, Verdict
from postwarden.policy.registry import checks


@dataclass(frozen=True)
class Context:
    facts: Facts
    policy: Policy
    now: datetime
    identity: str
    outbound_rule: str | None
    header_from: FromResult
    hosted_domain: str | None
    rate: RateState = field(default_factory=RateState)
    prior: tuple[Reason, ...] = ()  # what the checks before this one found


class UndeclaredReason(RuntimeError):
    pass


def evaluate(facts: Facts, policy: Policy, now: datetime, rate: RateState | None = None) -> Verdict:
    parsed_from = header_from(facts.header_values("From"))
    hosted = policy.hosted_domain(parsed_from.domain) if parsed_from.domain else None
    ctx = Context(
        facts=facts,
        policy=policy,
        now=now,
        identity=identity(facts),
        outbound_rule=matches_outbound(facts, policy.outbound),
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
        if any(r.final for r in found):
            break
    action = max((r.action for r in reasons), default=Action.ACCEPT)
    outbound = ctx.outbound_rule is not None and not facts.system_notice
    lock_cap = next((r.detail for r in reasons if r.key == "rate.locked_now"), "")
    return Verdict(
        action=action,
        reasons=tuple(reasons),
        outbound=ctx.outbound_rule is not None,
        # A rejected or tempfailed message uses none of the sender's allowance; a held one does.
        count=outbound and action in (Action.ACCEPT, Action.QUARANTINE),
        lock_cap=lock_cap,
        edits=header_edits(facts, policy, now, parsed_from.domain) if outbound and hosted else (),
        wrap_html=bool(outbound and hosted and policy.headers.wrap_bare_html),
        identity=ctx.identity,
        from_address=parsed_from.address,
        from_domain=parsed_from.domain,
        hosted_domain=hosted or "",
        policy_hash=policy.hash,
    )
