"""Suppressed recipients ([feedback]; feedback.md).

A recipient who reported mail from a hosted domain as spam (an abuse, fraud or virus report
through `postwarden feedback ingest`), or one an admin added with `postwarden suppression add`,
gets no more mail from that domain (or from any, for a server-wide entry). Over SMTP the
adapter refuses such a recipient at RCPT already, with `rcpt_text` (the envelope sender's
domain stands for the From domain there); what reaches end-of-message (sendmail(1) mail, or a
header From whose domain differs from the envelope's) is decided here: the suppressed
recipients are removed (RemoveRcpt, milter delrcpt) and named in the decision, the envelope
sender is told (NotifySender), and a message left with no recipient is refused.

The suppressions arrive as a fact (Facts.suppressed, read by the adapter from the store), so
the check stays pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from postwarden.policy.model import Action, Effect, NotifySender, Reason, RemoveRcpt, Suppression
from postwarden.policy.registry import register

if TYPE_CHECKING:
    from postwarden.policy.engine import Context

NAME = "suppression"
DEFAULTS: dict[str, object] = {"feedback.scope": "domain"}
CODES = {
    "removed": "recipients suppressed for the From domain (a complaint, or added by hand) were removed from the message; the text names them, and the envelope sender is mailed.",
    "all_suppressed": "every recipient is suppressed for the From domain: the message is refused with a text that names them and since when.",
}
READS: frozenset[str] = frozenset()  # neither the rate state nor the prior reasons


def why(s: Suppression) -> str:
    scope = f"mail from {s.domain}" if s.domain else "mail from this server"
    return (
        f"<{s.address}> is suppressed for {scope} since {s.since[:19].replace('T', ' ')} UTC"
        f" ({s.reason}; the recipient reported such mail as spam or asked for none)"
    )


def rcpt_text(s: Suppression) -> str:
    """The 5xx text at RCPT: why and since when, and what to do."""
    return f"{why(s)}; remove this address from your list"


@register(NAME, order=33, codes=CODES, defaults=DEFAULTS, reads=READS)
def check(ctx: Context) -> Iterator[Reason]:
    facts = ctx.facts
    if ctx.outbound_rule is None or facts.system_notice or not facts.suppressed:
        return
    if ctx.hosted_domain is None or not ctx.header_from.domain:
        return
    domain = ctx.header_from.domain
    hits: dict[str, Suppression] = {}
    for s in facts.suppressed:
        if s.applies_to(domain):
            hits.setdefault(s.address.lower(), s)
    removed = [(r, hits[r.lower()]) for r in facts.rcpts if r.lower() in hits]
    if not removed:
        return
    text = "; ".join(why(s) for _, s in removed)
    if len(removed) == len(facts.rcpts):
        yield Reason(
            NAME,
            "all_suppressed",
            Action.REJECT,
            f"no recipient left: {text}; remove these addresses from your list",
        )
        return
    effects: list[Effect] = [RemoveRcpt(r) for r, _ in removed]
    names = ", ".join(f"<{r}>" for r, _ in removed)
    if facts.mail_from:
        effects.append(
            NotifySender(
                facts.mail_from,
                f"postwarden: not delivered to {names}",
                "postwarden removed these recipients from your message"
                f" (Subject: {(facts.header_values('Subject') or ['(none)'])[0][:200]}); the"
                f" other recipients got it.\n\n"
                + "\n".join(why(s) for _, s in removed)
                + "\n\nRemove these addresses from your lists. If this is a mistake, ask your"
                " administrator (postwarden suppression remove ADDRESS).\n",
            )
        )
    yield Reason(
        NAME,
        "removed",
        Action.ACCEPT,
        f"removed {names}: {text}",
        detail=names,
        effects=tuple(effects),
    )
