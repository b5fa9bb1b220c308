"""Bulk mail on its own subdomain ([domains].streams, streams.md).

Config default: no `streams` on a domain, so none is required. Bulk mail (the [bulk] rules)
whose From domain is hosted under a domain with `streams = { bulk = "news.example.com" }`, but
is not that subdomain, is a violation ([bulk].on_violation), with a text that names the
subdomain to use: the bulk stream's reputation stays off the transactional domain's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "streams"
DEFAULTS: dict[str, object] = {'domains."example.com".streams.bulk': None}
CODES = {
    "bulk_domain": "bulk mail from a domain whose bulk stream is a subdomain of its own; the text names the subdomain to send it from.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons


@register(NAME, order=36, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.hosted_domain is None or ctx.facts.system_notice:
        return
    domain = ctx.policy.domains[ctx.hosted_domain]
    wanted = domain.streams.bulk if domain.streams is not None else None
    if not wanted:
        return
    from_domain = ctx.header_from.domain.lower().rstrip(".")
    if from_domain == wanted:
        return
    reason = ctx.bulk_reason
    if not reason:
        return
    yield Reason(
        NAME,
        "bulk_domain",
        Action.named(ctx.policy.bulk.on_violation),
        f"bulk mail ({reason}) from {from_domain} must be sent from {wanted}: put an address"
        f" at {wanted} in From",
        detail=wanted,
    )
