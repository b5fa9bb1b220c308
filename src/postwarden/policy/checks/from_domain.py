"""Header From domain is hosted ([defaults].unknown_from_domain, [domains]).

Config defaults: unknown_from_domain = "reject" (a From domain this server does not host is
the first mark of a forged or misrouted message). A From that cannot be read as one address is
always refused: ambiguity is never a pass, whatever unknown_from_domain says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "from_domain"
DEFAULTS: dict[str, object] = {
    "defaults.unknown_from_domain": "reject",
}
CODES = {
    "not_hosted": "the header From domain is not one of [domains] (nor a subdomain of one with include_subdomains).",
    "unreadable": "no single From address could be read (missing, repeated or ambiguous From header).",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons


@register(NAME, order=20, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    action = Action.named(ctx.policy.defaults.unknown_from_domain)
    parsed = ctx.header_from
    if parsed.problem:
        # Ambiguity is never a pass, whatever unknown_from_domain says (decisions.md, check 2).
        # A From [headers].repair could not repair is refused with the repair's own text (what
        # is wrong with its bytes and what to do), not as an address problem.
        unrepaired = [p.text for p in ctx.repairs.problems if p.name.lower() == "from"]
        repaired = any(c.name.lower() == "from" for c in ctx.repairs.changes)
        if unrepaired:
            text = unrepaired[0]
        elif repaired:
            # The sender wrote raw UTF-8, not the encoded-word the parser read: say so.
            text = (
                f"{parsed.problem}, once its raw UTF-8 display name was encoded (RFC 2047):"
                ' write the display name without , ; : " @ < >, and one From address'
            )
        else:
            text = f"{parsed.problem}: send with one From address"
        yield Reason(NAME, "unreadable", Action.REJECT, text)
    elif ctx.hosted_domain is None:
        yield Reason(
            NAME,
            "not_hosted",
            action,
            f"From <{parsed.address}>: domain {parsed.domain} is not hosted on this server;"
            " send from one of its domains",
        )
