"""Identity and alignment: who may send as what ([defaults].send_as, [users], [local],
[defaults].alignment).

A SASL login may put in From and MAIL FROM what its [users] entry allows, else
[defaults].send_as. Mail from sendmail(1) may use what [local] allows the local user whose
envelope sender it is (Postfix's local_login_sender_maps pins each user to those). An `ip:`
sender let in by a network or daemon rule has no send_as rules: any hosted From. The envelope
sender's domain must align with the From domain: the same organisational domain (relaxed, by
the Public Suffix List, offline) or the same domain (strict). A null envelope sender (a bounce)
is allowed. The envelope sender is held to send_as even when the From is not hosted (and
[defaults].unknown_from_domain lets it through). Sender, Resent-From and Resent-Sender, each copy
present, are held to From's rules: one plain address, a hosted domain (else unknown_from_domain),
one the identity may send as, aligned with the envelope sender. Every other violation is a
reject: a forged sender is never worth holding.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden import suffixes
from postwarden.policy.address import header_address
from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register
from postwarden.policy.route import pattern_matches, send_as_patterns

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "identity"
DEFAULTS: dict[str, object] = {
    "defaults.send_as": ["{login}"],
    "defaults.alignment": "relaxed",
}
CODES = {
    "not_allowed": "the sender may not send as the header From address.",
    "envelope_not_allowed": "the sender may not use this envelope sender (MAIL FROM).",
    "misaligned": "the envelope sender's domain does not align with the From domain.",
    "sender_unreadable": "a Sender, Resent-From or Resent-Sender header does not hold exactly one plain address (read as From is).",
    "sender_not_hosted": "the domain of a Sender, Resent-From or Resent-Sender address is not hosted; it gets [defaults].unknown_from_domain, as From does.",
    "sender_not_allowed": "the sender may not send as the Sender, Resent-From or Resent-Sender address.",
    "sender_misaligned": "the envelope sender's domain does not align with the Sender, Resent-From or Resent-Sender domain.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons
# Shown by mail readers beside or instead of From ("ceo@example.com on behalf of Alice"): held
# to From's rules, each copy (decisions.md, check 3).
FROM_LIKE = ("Sender", "Resent-From", "Resent-Sender")


def aligned(envelope_domain: str, from_domain: str, mode: str) -> bool:
    if mode == "strict":
        return envelope_domain == from_domain
    return _organisational(envelope_domain) == _organisational(from_domain)


@functools.lru_cache(maxsize=4096)
def _organisational(domain: str) -> str:
    """The organisational domain (the Public Suffix List's private suffix), else the domain:
    a message asks for two, and a server's mail mostly names the same few."""
    return suffixes.organisational(domain)


@register(NAME, order=30, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    facts, frm = ctx.facts, ctx.header_from
    if ctx.outbound_rule is None or frm.problem:
        return  # inbound, or from_domain has already said what is wrong
    hosted = ctx.hosted_domain is not None
    rules = send_as_patterns(ctx.route, facts, ctx.policy)
    if rules is not None:
        patterns, who = rules
        login = ctx.route.login
        # A From outside the hosted domains is from_domain's (unknown_from_domain); the envelope
        # sender is always held to send_as, whatever the From says.
        if hosted and not any(pattern_matches(p, frm.address, login) for p in patterns):
            yield Reason(
                NAME,
                "not_allowed",
                Action.REJECT,
                f"From <{frm.address}> is not an address {who} may send as",
            )
        if facts.mail_from and not any(
            pattern_matches(p, facts.mail_from, login) for p in patterns
        ):
            yield Reason(
                NAME,
                "envelope_not_allowed",
                Action.REJECT,
                f"MAIL FROM <{facts.mail_from}> is not an address {who} may send as",
            )
    if hosted and facts.mail_from:
        envelope_domain = facts.mail_from.rpartition("@")[2].lower()
        mode = ctx.policy.defaults.alignment
        if not aligned(envelope_domain, frm.domain, mode):
            yield Reason(
                NAME,
                "misaligned",
                Action.REJECT,
                f"MAIL FROM <{facts.mail_from}> does not align with From <{frm.address}>"
                f" ({mode} alignment): use an envelope sender in {frm.domain}",
            )
    yield from _from_like(ctx, rules)


def _from_like(ctx: Context, rules: tuple[list[str], str] | None) -> Iterator[Reason]:
    """Sender, Resent-From and Resent-Sender: one address, hosted, one the identity may send
    as, aligned with the envelope sender."""
    facts, policy = ctx.facts, ctx.policy
    for name in FROM_LIKE:
        for value in facts.header_values(name):
            parsed = header_address(name, [value])
            if parsed.problem:
                yield Reason(
                    NAME,
                    "sender_unreadable",
                    Action.REJECT,
                    f"{parsed.problem}: send it with one address, or without a {name} header",
                    detail=name,
                )
                continue
            addr, domain = parsed.address, parsed.domain
            if policy.hosted_domain(domain) is None:
                yield Reason(
                    NAME,
                    "sender_not_hosted",
                    Action.named(policy.defaults.unknown_from_domain),
                    f"{name} <{addr}>: domain {domain} is not hosted on this server; use one of"
                    f" its domains or drop the {name} header",
                    detail=name,
                )
                continue
            if rules is not None:
                patterns, who = rules
                if not any(pattern_matches(p, addr, ctx.route.login) for p in patterns):
                    yield Reason(
                        NAME,
                        "sender_not_allowed",
                        Action.REJECT,
                        f"{name} <{addr}> is not an address {who} may send as",
                        detail=name,
                    )
            if facts.mail_from:
                mode = policy.defaults.alignment
                envelope_domain = facts.mail_from.rpartition("@")[2].lower()
                if not aligned(envelope_domain, domain, mode):
                    yield Reason(
                        NAME,
                        "sender_misaligned",
                        Action.REJECT,
                        f"MAIL FROM <{facts.mail_from}> does not align with {name} <{addr}>"
                        f" ({mode} alignment)",
                        detail=name,
                    )
