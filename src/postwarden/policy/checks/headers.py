"""Header hygiene ([headers]).

Config defaults: require = ["From", "Date", "Message-ID"], add_missing = ["Date",
"Message-ID"] (added in the From domain, before signing), remove = ["X-Originating-IP",
"X-PHP-Originating-Script"] (every copy: they leak the sender's address and scripts),
on_violation = "reject". The edits themselves are made by the adapter from the verdict.
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
    "headers.on_violation": "reject",
}
CODES = {
    "missing": "a required header is missing and postwarden does not add it.",
    "duplicate": "more than one Date, Subject or Message-ID header.",
    "too_long": "a header line is over 998 octets (RFC 5322 2.1.1).",
    "eight_bit": "a header holds raw 8-bit bytes and the client did not use SMTPUTF8.",
    "mime": "the body's MIME parts are nested deeper than postwarden reads (32 levels), or a Content-Type or boundary is oversized; always refused.",
}
SINGLE = ("Date", "Subject", "Message-ID")
MAX_LINE = 998


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


@register(NAME, order=25, codes=CODES, defaults=DEFAULTS)
def check(ctx: Context) -> Iterator[Reason]:
    if ctx.outbound_rule is None or ctx.hosted_domain is None:
        return
    facts, rules = ctx.facts, ctx.policy.headers
    action = Action.named(rules.on_violation)
    if facts.mime_problem:
        # Nothing can be read, wrapped or checked past this: refused, whatever on_violation.
        yield Reason(NAME, "mime", Action.REJECT, facts.mime_problem)
    present = {k.lower() for k, _ in facts.headers}
    added = {h.lower() for h in rules.add_missing}
    missing = [h for h in rules.require if h.lower() not in present and h.lower() not in added]
    if missing:
        yield Reason(
            NAME, "missing", action, f"the message has no {', '.join(missing)} header: add it"
        )
    for name in SINGLE:
        n = len(facts.header_values(name))
        if n > 1:
            yield Reason(
                NAME, "duplicate", action, f"the message has {n} {name} headers; it needs one"
            )
    for name, value in facts.headers:
        lines = f"{name}: {value}".split("\n")
        if any(_octets(line.rstrip("\r")) > MAX_LINE for line in lines):
            yield Reason(
                NAME,
                "too_long",
                action,
                f"the {name} header has a line over {MAX_LINE} octets: fold it",
            )
            break
    if not facts.smtputf8:
        for name, value in facts.headers:
            if any(ord(c) > 127 for c in name + value):
                yield Reason(
                    NAME,
                    "eight_bit",
                    action,
                    f"the {name} header holds raw 8-bit bytes: encode it (RFC 2047) or send with SMTPUTF8",
                )
                break
