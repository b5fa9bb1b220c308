"""Header edits postwarden makes before signing ([headers].remove and add_missing): pure."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime
from email.utils import format_datetime

from postwarden.config.models import Policy
from postwarden.policy.model import Facts, HeaderEdit
from postwarden.policy.repair import Change

# [headers].strip_client_received = true also removes these (every copy): the submission
# client's own Received lines and the usual client-IP headers.
CLIENT_TRACE = ("Received", "X-Originating-IP", "X-Forwarded-For", "X-Sender-IP")


def removed_names(policy: Policy) -> list[str]:
    """Every header name removed before signing, each once (case-insensitive)."""
    names = list(policy.headers.remove)
    if policy.headers.strip_client_received:
        names += CLIENT_TRACE
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(name.lower(), name)
    return list(out.values())


def repair_edits(changes: tuple[Change, ...]) -> tuple[HeaderEdit, ...]:
    """[headers].repair: each repaired header replaced in place (before any removal)."""
    return tuple(HeaderEdit("replace", c.name, c.index, c.value) for c in changes)


def header_edits(
    facts: Facts, policy: Policy, now: datetime, from_domain: str
) -> tuple[HeaderEdit, ...]:
    edits: list[HeaderEdit] = []
    for name in removed_names(policy):
        copies = len(facts.header_values(name))
        # Highest index first: Postfix renumbers the later copies after each deletion.
        edits += [HeaderEdit("remove", name, i) for i in range(copies, 0, -1)]
    if "Date" in policy.headers.add_missing and not facts.has_header("date"):
        edits.append(HeaderEdit("add", "Date", value=format_datetime(now)))
    if (
        "Message-ID" in policy.headers.add_missing
        and not facts.has_header("message-id")
        and from_domain
    ):
        # Unique without a random source: the queue id and the time, or a digest of the facts.
        token = facts.queue_id or hashlib.sha256(repr(facts).encode()).hexdigest()[:16]
        edits.append(
            HeaderEdit("add", "Message-ID", value=f"<{now:%Y%m%d%H%M%S}.{token}@{from_domain}>")
        )
    return tuple(edits)


def sender_tag(identity: str, key: str) -> str:
    """A stable tag of the sender identity that does not reveal it: an HMAC under the
    server's key (a bare hash of an address could be reversed by guessing)."""
    digest = hmac.new(key.encode(), b"feedback-id\0" + identity.lower().encode(), hashlib.sha256)
    return digest.hexdigest()[:16]


def feedback_id_edits(
    facts: Facts, identity: str, from_domain: str, stream: str
) -> tuple[HeaderEdit, ...]:
    """[feedback].feedback_id: Feedback-ID: <stream>:<sender tag>:<From domain>:<hostname>,
    added before signing (so inside h=), replacing any the sender wrote."""
    copies = len(facts.header_values("Feedback-ID"))
    edits = [HeaderEdit("remove", "Feedback-ID", i) for i in range(copies, 0, -1)]
    host = re.sub(r"[^A-Za-z0-9.-]", "", facts.hostname) or "localhost"
    value = f"{stream}:{sender_tag(identity, facts.tag_key)}:{from_domain.lower()}:{host.lower()}"
    edits.append(HeaderEdit("add", "Feedback-ID", value=value))
    return tuple(edits)


def headers_after(
    headers: list[tuple[str, str]], edits: tuple[HeaderEdit, ...]
) -> list[tuple[str, str]]:
    """The header list as it will leave, once `edits` are applied."""
    out = list(headers)
    for edit in edits:
        if edit.op in ("remove", "replace"):
            seen = 0
            for i, (name, _) in enumerate(out):
                if name.lower() == edit.name.lower():
                    seen += 1
                    if seen == edit.index:
                        if edit.op == "remove":
                            del out[i]
                        else:
                            out[i] = (name, edit.value)
                        break
        else:
            out.append((edit.name, edit.value))
    return out
