"""Rate caps and locks ([rate]; `rate` in [domains] and [users]).

Config defaults: messages = ["30/minute", "500/hour", "2000/day"], recipients = ["200/minute",
"5000/day"], on_exceed = "quarantine", lock = true: a compromised account is stopped at its
cap, and its mail is held, not lost, until an admin has looked.

Counts arrive as an argument (RateState), read by the adapter in the same SQLite transaction
that records the message, so the check stays pure and the count exact. A message that another
check rejects or tempfails uses none of the allowance; a held one uses it. The caps are the
route's (policy/route.py): a login's [users] entry, else its domain's [domains] entry when the
login is an address, else [rate]; an override replaces the caps of the windows it names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, LockSender, Notify, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "rate"
DEFAULTS: dict[str, object] = {
    "rate.messages": ["30/minute", "500/hour", "2000/day"],
    "rate.recipients": ["200/minute", "5000/day"],
    "rate.on_exceed": "quarantine",
    "rate.lock": True,
}
CODES = {
    "locked": "the sender is locked since it broke a cap; its mail is held until `postwarden unlock`.",
    "exceeded": "this message would break a cap; it gets [rate].on_exceed.",
    "locked_now": "this message broke a cap and locked the sender ([rate].lock = true); the admins in [rate].notify are mailed.",
}
# The sender's counts and lock; and the reasons before it (a refused message uses no allowance).
READS = frozenset({"rate", "prior"})


@register(NAME, order=40, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.facts.system_notice:
        return
    if any(r.action in (Action.REJECT, Action.TEMPFAIL) for r in ctx.prior):
        return
    who = ctx.identity
    lock = ctx.rate.lock
    if lock is not None:
        yield Reason(
            NAME,
            "locked",
            Action.QUARANTINE,
            f"sender {who} is locked since {lock.locked_at[:19]}Z ({lock.cap}); its mail is held"
            " until an admin unlocks it",
        )
        return
    message_caps, recipient_caps = ctx.route.caps.messages, ctx.route.caps.recipients
    n_rcpts = len(ctx.facts.rcpts)
    broken = ""
    for limit, window, spec in message_caps:
        if ctx.rate.in_window(window)[0] + 1 > limit:
            broken = f"messages {spec}"
            break
    if not broken:
        for limit, window, spec in recipient_caps:
            if ctx.rate.in_window(window)[1] + n_rcpts > limit:
                broken = f"recipients {spec}"
                break
    if not broken:
        return
    rate = ctx.policy.rate
    yield Reason(
        NAME,
        "exceeded",
        Action.named(rate.on_exceed),
        f"sender {who} is over its cap of {broken}; try again later",
        detail=broken,
    )
    if rate.lock:
        yield Reason(
            NAME,
            "locked_now",
            Action.QUARANTINE,
            f"sender {who} broke its cap of {broken} and is locked: its mail is held until an"
            " admin unlocks it",
            detail=broken,
            effects=(LockSender(who, broken), Notify(who, broken)),
        )
