"""Header hygiene ([headers]).

Config defaults: require = ["From", "Date", "Message-ID"], add_missing = ["Date",
"Message-ID"] (added in the From domain, before signing), remove = ["X-Originating-IP",
"X-PHP-Originating-Script"] (every copy: they leak the sender's address and scripts),
on_violation = "reject". The edits themselves are made by milter/effects.py from the plan.

repair = true: raw UTF-8 in a header sent without SMTPUTF8 is RFC 2047-encoded and a line over
998 octets refolded, before signing (policy/repair.py); each repair is an accept reason, and
what cannot be repaired is a violation that names the header. strip_client_received = false
(an addition to the spec): when true, the client's own Received headers and X-Originating-IP,
X-Forwarded-For and X-Sender-IP are removed too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Reason
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "headers"
DEFAULTS: dict[str, object] = {
    "headers.require": ["From", "Date", "Message-ID"],
    "headers.add_missing": ["Date", "Message-ID"],
    "headers.remove": ["X-Originating-IP", "X-PHP-Originating-Script"],
    "headers.wrap_bare_html": True,
    "headers.repair": True,
    "headers.strip_client_received": False,
    "headers.on_violation": "reject",
}
CODES = {
    "missing": "a required header is missing and postwarden does not add it.",
    "duplicate": "more than one copy of a header RFC 5322 allows once: Sender, Reply-To, To, Cc, Bcc, Subject, Date, Message-ID, In-Reply-To or References (two From headers are from_domain.unreadable).",
    "too_long": "a header line is over 998 octets (RFC 5322 2.1.1) and could not be refolded (no whitespace or comma to fold at, or [headers].repair = false).",
    "eight_bit": "a header holds raw 8-bit bytes, the client did not use SMTPUTF8, and they could not be encoded: bytes that are not UTF-8 (Latin-1), non-ASCII in an address or a structured header, or [headers].repair = false.",
    "mime": "the body's MIME parts are nested deeper than postwarden reads (32 levels), or a Content-Type or boundary is oversized; always refused.",
    "encoded": "repaired (accept): raw UTF-8 text in this header, sent without SMTPUTF8, was RFC 2047-encoded before signing ([headers].repair).",
    "refolded": "repaired (accept): a line of this header over 998 octets was refolded at whitespace or between addresses before signing ([headers].repair).",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons
# The headers RFC 5322 allows at most once (From is judged by from_domain: two are unreadable).
SINGLE = (
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
)
REPAIRED = {
    "encoded": "its raw UTF-8 text was encoded as RFC 2047 encoded words",
    "refolded": "its line over 998 octets was refolded",
}


@register(NAME, order=25, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.hosted_domain is None:
        return
    facts, rules = ctx.facts, ctx.policy.headers
    action = Action.named(rules.on_violation)
    if facts.mime_problem:
        # Nothing can be read, wrapped or checked past this: refused, whatever on_violation.
        yield Reason(NAME, "mime", Action.REJECT, facts.mime_problem)
    added = {h.lower() for h in rules.add_missing}
    missing = [h for h in rules.require if not facts.has_header(h) and h.lower() not in added]
    if missing:
        yield Reason(
            NAME, "missing", action, f"the message has no {', '.join(missing)} header: add it"
        )
    for name in SINGLE:
        n = len(facts.header_values(name))
        if n > 1:
            yield Reason(
                NAME,
                "duplicate",
                action,
                f"the message has {n} {name} headers; it may have one",
                detail=name,
            )
    # [headers].repair: what was repaired is said (accept), what could not be is a violation.
    for change in ctx.repairs.changes:
        for kind in change.kinds:
            yield Reason(
                NAME,
                kind,
                Action.ACCEPT,
                f"repaired the {change.name} header: {REPAIRED[kind]}",
                detail=change.name,
            )
    for problem in ctx.repairs.problems:
        yield Reason(NAME, problem.code, action, problem.text, detail=problem.name)
