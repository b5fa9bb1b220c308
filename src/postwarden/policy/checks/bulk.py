"""Bulk-sender rules ([bulk]; `bulk` in [domains] and [users]).

Config defaults: recipients = 50, require_one_click_unsubscribe = true, on_violation = "reject":
Gmail and Yahoo refuse bulk mail without one-click unsubscribe, so it is better refused here
with a text that says what to add.

A message is bulk when it has Precedence: bulk, list or junk, a List-Id, more than
[bulk].recipients recipients, or comes from a login or domain marked bulk = true. Bulk mail
needs List-Unsubscribe with an https URI and List-Unsubscribe-Post: List-Unsubscribe=One-Click
(RFC 8058); the signature covers both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register
from postwarden.policy.route import user_entry

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "bulk"
DEFAULTS: dict[str, object] = {
    "bulk.recipients": 50,
    "bulk.require_one_click_unsubscribe": True,
    "bulk.on_violation": "reject",
}
CODES = {
    "no_one_click": "bulk mail without RFC 8058 one-click unsubscribe; the text names what is missing.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons
_URI = re.compile(r"<([^>]*)>")


def why_bulk(ctx: Context) -> str:
    """Why this message is bulk, or "" when it is not."""
    facts, policy = ctx.facts, ctx.policy
    precedence = [v.strip().lower() for v in facts.header_values("Precedence")]
    if any(p in ("bulk", "list", "junk") for p in precedence):
        return f"Precedence: {precedence[0]}"
    if facts.header_values("List-Id"):
        return "it has a List-Id"
    if len(facts.rcpts) > policy.bulk.recipients:
        return f"{len(facts.rcpts)} recipients, more than {policy.bulk.recipients}"
    user = user_entry(policy, ctx.route.login) if ctx.route.login else None
    if user is not None and user.bulk:
        return f"{ctx.route.login} is marked bulk"
    if ctx.hosted_domain and policy.domains[ctx.hosted_domain].bulk:
        return f"{ctx.hosted_domain} is marked bulk"
    return ""


@register(NAME, order=35, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.hosted_domain is None:
        return
    if not ctx.policy.bulk.require_one_click_unsubscribe:
        return
    reason = ctx.bulk_reason
    if not reason:
        return
    missing = []
    unsubscribe = ctx.facts.header_values("List-Unsubscribe")
    uris = [u.strip() for v in unsubscribe for u in _URI.findall(v)]
    if not any(u.lower().startswith("https://") for u in uris):
        missing.append(
            "List-Unsubscribe with an https URI"
            if not unsubscribe
            else "an https URI in List-Unsubscribe"
        )
    posts = [v.strip() for v in ctx.facts.header_values("List-Unsubscribe-Post")]
    if posts != ["List-Unsubscribe=One-Click"]:
        missing.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    if missing:
        yield Reason(
            NAME,
            "no_one_click",
            Action.named(ctx.policy.bulk.on_violation),
            f"bulk mail ({reason}) needs one-click unsubscribe (RFC 8058): add "
            + " and ".join(missing),
        )
