"""Pacing of bulk mail ([streams.bulk].pace, streams.md).

Config default: pace = "" (no pacing). With a pace such as "600/hour", bulk mail (the [bulk]
rules) is accepted at once (the client gets 250), held in Postfix's hold queue and released by
postwarden's releaser in order, one at a time, never more than N in any window of the pace's
length (counted at release). Every bulk message goes through the schedule, so the order holds;
while the window has room the releaser lets it go within a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "pace"
DEFAULTS: dict[str, object] = {"streams.bulk.pace": ""}
CODES = {
    "paced": "bulk mail held to be released at [streams.bulk].pace; `quarantine list` shows when it is due.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons


@register(NAME, order=45, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    pace = ctx.policy.streams.bulk.pace
    if not pace or ctx.outbound_rule is None or ctx.facts.system_notice:
        return
    reason = ctx.bulk_reason
    if not reason:
        return
    yield Reason(
        NAME,
        "paced",
        Action.QUARANTINE,
        f"bulk mail ({reason}) is accepted and leaves at the pace of {pace}",
        detail=pace,
    )
