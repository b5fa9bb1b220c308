"""Inbound or outbound ([milter].outbound).

Mail that matches no outbound rule is inbound: it is passed untouched, not signed and not
counted, and no later check runs, so attaching postwarden to port 25 never judges mail from
the internet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "outbound"
DEFAULTS: dict[str, object] = {}
CODES = {
    "inbound": "the message matched no [milter].outbound rule and was passed untouched.",
    "notice": "postwarden's own notice (a lock alert, proven by its HMAC header): passed, never counted or held.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons


@register(NAME, order=10, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.facts.system_notice:
        yield Reason(NAME, "notice", Action.ACCEPT, "postwarden's own notice: passed", final=True)
        return
    if ctx.outbound_rule is None:
        yield Reason(
            NAME,
            "inbound",
            Action.ACCEPT,
            "inbound mail (matched no [milter].outbound rule): passed untouched",
            final=True,
        )
