"""Warm-up of a new From domain or of the whole server ([warmup], [providers], streams.md).

Config default: no [warmup], so nothing is limited. A [warmup."news.example.com"] (or
[warmup.server]) entry allows `daily[d-1]` recipients per provider group on day d of its
schedule (UTC days, `start` is day 1; after the last day, no limit). Every outbound message from
that From domain (or from this server) counts, transactional and bulk, one per recipient in a
limited group. A message that would take a group past today's allowance, or that would overtake
held mail of that group, is not refused: it is held (warmup.paced) and released oldest first
as the allowance returns, the next day if need be.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register
from postwarden.policy.streams import warmup_allowance, warmup_charges, warmup_day

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "warmup"
DEFAULTS: dict[str, object] = {"warmup": {}, "providers": "gmail, microsoft, yahoo (config.md)"}
CODES = {
    "paced": "past today's warm-up allowance for a provider group (or behind held mail of it); held and released oldest first as the allowance returns.",
}
READS = frozenset({"rate"})  # today's warm-up counts, read in the rate transaction


@register(NAME, order=46, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.facts.system_notice or not ctx.policy.warmup:
        return
    charges = warmup_charges(ctx.policy, ctx.header_from.domain, ctx.facts.rcpts)
    if not charges:
        return
    today = date.fromisoformat(ctx.rate.warmup_today) if ctx.rate.warmup_today else ctx.now.date()
    over = []
    for key, group, n in charges:
        entry = ctx.policy.warmup[key]
        allowance = warmup_allowance(entry, today)
        if allowance is None:
            continue
        sent, waiting = ctx.rate.warmup_of(key, group)
        if waiting or sent + n > allowance:
            over.append(
                f"{key} to {group}: {sent} of {allowance} used on day {warmup_day(entry, today)}"
                + (f", {waiting} waiting" if waiting else "")
            )
    if over:
        yield Reason(
            NAME,
            "paced",
            Action.QUARANTINE,
            "warm-up allowance reached (" + "; ".join(over) + "): accepted, it leaves as the"
            " allowance returns",
            detail="; ".join(over),
        )
