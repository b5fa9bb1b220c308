"""Header hygiene: violations (table) and the edits made before signing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postwarden.config.models import DomainPolicy, HeadersSection, Policy
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.hygiene import headers_after
from postwarden.policy.model import HeaderEdit

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(domains={"example.com": DomainPolicy()}, outbound=["sasl"])
BASE = (
    ("From", "a@example.com"),
    ("Date", "Mon, 23 Nov 2026 09:00:00 +0000"),
    ("Message-ID", "<1@example.com>"),
)


def run(headers: tuple[tuple[str, str], ...], smtputf8: bool = False, policy: Policy = POLICY):  # type: ignore[no-untyped-def]
    f = Facts(
        auth_login="a@example.com",
        client_port=1,
        mail_from="a@example.com",
        rcpts=("r@x.test",),
        headers=headers,
        smtputf8=smtputf8,
        queue_id="QID1",
    )
    return evaluate(f, policy, NOW)


@pytest.mark.parametrize(
    ("headers", "codes"),
    [
        (BASE, []),
        ((*BASE, ("Subject", "a"), ("Subject", "b")), ["headers.duplicate"]),
        ((*BASE, ("Date", "Tue, 24 Nov 2026 09:00:00 +0000")), ["headers.duplicate"]),
        ((*BASE, ("Message-ID", "<2@example.com>")), ["headers.duplicate"]),
        ((*BASE, ("X-Long", "x" * 995)), ["headers.too_long"]),
        ((*BASE, ("X-Long", "x" * 990)), []),
        ((*BASE, ("X-Folded", "x" * 900 + "\n\t" + "y" * 900)), []),  # each line under 998
        ((*BASE, ("Subject", "caf\u00e9")), ["headers.encoded"]),  # raw UTF-8: repaired
        ((*BASE, ("Subject", "caf\udce9")), ["headers.eight_bit"]),  # Latin-1 byte: refused
        ((*BASE, ("Subject", "=?utf-8?q?caf=C3=A9?=")), []),
        ((*BASE, ("X-Long", "word " * 300)), ["headers.refolded"]),  # folded at whitespace
        # At most once: every header RFC 5322 allows once.
        ((*BASE, ("Sender", "a@example.com"), ("Sender", "a@example.com")), ["headers.duplicate"]),
        ((*BASE, ("Reply-To", "a@x.test"), ("Reply-To", "b@x.test")), ["headers.duplicate"]),
        ((*BASE, ("To", "a@x.test"), ("To", "b@x.test")), ["headers.duplicate"]),
        ((*BASE, ("Cc", "a@x.test"), ("Cc", "b@x.test")), ["headers.duplicate"]),
        ((*BASE, ("Bcc", "a@x.test"), ("Bcc", "b@x.test")), ["headers.duplicate"]),
        ((*BASE, ("In-Reply-To", "<a@x>"), ("In-Reply-To", "<b@x>")), ["headers.duplicate"]),
        ((*BASE, ("References", "<a@x>"), ("References", "<b@x>")), ["headers.duplicate"]),
        ((*BASE, ("From", "a@example.com")), ["from_domain.unreadable"]),
        # Fields that may repeat do.
        ((*BASE, ("Received", "from a"), ("Received", "from b")), []),
        ((*BASE, ("Comments", "a"), ("Comments", "b"), ("Keywords", "k"), ("Keywords", "l")), []),
    ],
)
def test_header_violations(headers: tuple[tuple[str, str], ...], codes: list[str]) -> None:
    v = run(headers)
    assert [r.key for r in v.reasons] == codes
    refused = [c for c in codes if c not in ("headers.encoded", "headers.refolded")]
    assert v.action == (Action.REJECT if refused else Action.ACCEPT)


def test_8bit_headers_are_fine_with_smtputf8() -> None:
    assert run((*BASE, ("Subject", "caf\u00e9")), smtputf8=True).reasons == ()
    assert run((*BASE, ("Subject", "caf\udce9")), smtputf8=True).reasons == ()


def test_missing_required_header_not_added_is_a_violation() -> None:
    policy = POLICY.model_copy(
        update={
            "headers": HeadersSection(require=["From", "Date", "Subject"], add_missing=["Date"])
        }
    )
    v = run((("From", "a@example.com"),), policy=policy)
    assert [r.text for r in v.reasons] == ["the message has no Subject header: add it"]


def test_edits_add_missing_date_and_message_id_in_the_from_domain() -> None:
    v = run((("From", "a@example.com"), ("Subject", "s")))
    assert v.edits == (
        HeaderEdit("add", "Date", value="Mon, 23 Nov 2026 10:00:00 +0000"),
        HeaderEdit("add", "Message-ID", value="<20261123100000.QID1@example.com>"),
    )


def test_edits_remove_every_copy_highest_index_first() -> None:
    headers = (
        *BASE,
        ("X-Originating-IP", "[10.0.0.1]"),
        ("X-Keep", "1"),
        ("x-originating-ip", "[10.0.0.2]"),
        ("X-PHP-Originating-Script", "1000:form.php"),
    )
    v = run(headers)
    assert v.edits == (
        HeaderEdit("remove", "X-Originating-IP", 2),
        HeaderEdit("remove", "X-Originating-IP", 1),
        HeaderEdit("remove", "X-PHP-Originating-Script", 1),
    )
    # Applied in that order, the others keep their order.
    assert headers_after(list(headers), v.edits) == list((*BASE, ("X-Keep", "1")))


def test_no_edits_for_inbound_or_unhosted_mail() -> None:
    f = Facts(client_port=1, headers=(("From", "a@example.com"), ("X-Originating-IP", "1")))
    assert evaluate(f, POLICY, NOW).edits == ()
