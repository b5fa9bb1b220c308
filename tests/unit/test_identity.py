"""Identity, send_as and alignment, and the From parser against tricky values (many from the
espoofer test cases): no ambiguous value passes. Then every message of the malformed-email
corpus goes through the engine without an exception."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from postwarden.config.models import DefaultsSection, DomainPolicy, LocalSection, Policy, UserPolicy
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.address import header_from
from postwarden.policy.route import pattern_matches
from tests.helpers import SHARED

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={
        "example.com": DomainPolicy(),
        "sales.example.com": DomainPolicy(),
        "example.net": DomainPolicy(include_subdomains=True),
        "example.co.uk": DomainPolicy(),
    },
    users={
        "alice@example.com": UserPolicy(send_as=["alice@example.com", "*@sales.example.com"]),
        "bob": UserPolicy(send_as=["bob@example.net", "*@*.example.net"]),
    },
    local=LocalSection(send_as={"www-data": ["contact@example.com"], "root": ["*@example.net"]}),
    outbound=["sasl", "local", "network:192.0.2.0/24"],
)


def facts(
    frm: str, mail_from: str, login: str = "", local: bool = False, addr: str = "198.51.100.1"
) -> Facts:
    return Facts(
        auth_login=login,
        local_submission=local,
        client_addr=addr,
        client_port=0 if local else 4000,
        mail_from=mail_from,
        rcpts=("x@remote.test",),
        headers=(("From", frm),),
    )


@pytest.mark.parametrize(
    ("frm", "mail_from", "login", "local", "codes"),
    [
        # SASL: {login} by default; [users] send_as for alice and bob
        ("carol@example.com", "carol@example.com", "carol@example.com", False, []),
        (
            "dave@example.com",
            "carol@example.com",
            "carol@example.com",
            False,
            ["identity.not_allowed"],
        ),
        (
            "carol@example.com",
            "dave@example.com",
            "carol@example.com",
            False,
            ["identity.envelope_not_allowed"],
        ),
        ("alice@example.com", "alice@example.com", "alice@example.com", False, []),
        (
            "news@sales.example.com",
            "news@sales.example.com",
            "alice@example.com",
            False,
            [],
        ),  # alias
        (
            "bob@example.com",
            "alice@example.com",
            "alice@example.com",
            False,
            ["identity.not_allowed"],
        ),
        ("bob@example.net", "bob@example.net", "bob", False, []),
        ("x@lists.example.net", "bob@example.net", "bob", False, []),  # *@*.example.net, relaxed
        (
            "x@example.net",
            "bob@example.net",
            "bob",
            False,
            ["identity.not_allowed"],
        ),  # *.example.net is not example.net
        # alignment: relaxed = same organisational domain (PSL: example.co.uk, not co.uk)
        ("alice@example.com", "", "alice@example.com", False, []),  # null sender: a bounce
        (
            "news@sales.example.com",
            "alice@example.com",
            "alice@example.com",
            False,
            [],
        ),  # same org domain
        (
            "carol@example.co.uk",
            "carol@other.co.uk",
            "carol@example.co.uk",
            False,
            ["identity.envelope_not_allowed", "identity.misaligned"],
        ),
        # local: the envelope sender names the local user; its From may be what that user's entry allows
        ("contact@example.com", "contact@example.com", "", True, []),
        ("ceo@example.com", "contact@example.com", "", True, ["identity.not_allowed"]),
        ("cron@example.net", "root@example.net", "", True, []),
        (
            "cron@example.net",
            "nobody@example.com",
            "",
            True,
            ["identity.not_allowed", "identity.envelope_not_allowed", "identity.misaligned"],
        ),
        # ip: a network-rule sender has no send_as rules, but alignment still holds
        ("any@example.com", "app@example.com", "", False, []),
    ],
)
def test_send_as_and_alignment(
    frm: str, mail_from: str, login: str, local: bool, codes: list[str]
) -> None:
    f = facts(frm, mail_from, login, local, addr="192.0.2.5")
    v = evaluate(f, POLICY, NOW)
    assert [r.key for r in v.reasons] == codes
    assert v.action == (Action.REJECT if codes else Action.ACCEPT)


def test_strict_alignment() -> None:
    strict = POLICY.model_copy(update={"defaults": DefaultsSection(alignment="strict")})
    v = evaluate(
        facts("news@sales.example.com", "alice@example.com", "alice@example.com"), strict, NOW
    )
    assert [r.key for r in v.reasons] == ["identity.misaligned"]


def test_reject_text_names_both_addresses() -> None:
    v = evaluate(
        facts("bob@example.org", "alice@example.com", "alice@example.com"),
        POLICY.model_copy(update={"domains": {**POLICY.domains, "example.org": DomainPolicy()}}),
        NOW,
    )
    assert v.reply() == (
        "550",
        "5.7.1",
        "From <bob@example.org> is not an address alice@example.com may send as; "
        "MAIL FROM <alice@example.com> does not align with From <bob@example.org> (relaxed alignment):"
        " use an envelope sender in example.org",
    )


@pytest.mark.parametrize(
    ("pattern", "address", "login", "expected"),
    [
        ("{login}", "alice@example.com", "ALICE@example.com", True),
        ("{login}", "alice@example.com", "alice", False),
        ("*@example.com", "x@EXAMPLE.com", "", True),
        ("*@example.com", "x@sub.example.com", "", False),
        ("*@*.example.com", "x@sub.example.com", "", True),
        ("*@*.example.com", "x@example.com", "", False),
        ("*@*.example.com", "x@badexample.com", "", False),
        ("a@example.com", "A@Example.com", "", True),
    ],
)
def test_patterns(pattern: str, address: str, login: str, expected: bool) -> None:
    assert pattern_matches(pattern, address, login) is expected


# Each of these could be read as more than one address, or as an address other than the one
# a reader sees. Many are espoofer's header-From cases. None may pass.
TRICKY = [
    '"alice@example.com" <mallory@evil.test>',
    "alice@example.com <mallory@evil.test>",
    "alice@example.com, mallory@evil.test",
    "mallory@evil.test, alice@example.com",
    "=?utf-8?B?YWxpY2VAZXhhbXBsZS5jb20=?= <mallory@evil.test>",
    "=?utf-8?Q?alice=40example.com?= <mallory@evil.test>",
    "=?utf-8?B?PGFsaWNlQGV4YW1wbGUuY29tPg==?= <mallory@evil.test>",
    "=?utf-8?Q?alice@example.com=2C?= <mallory@evil.test>",
    "<@evil.test:alice@example.com>",
    "<@example.com,@evil.test:mallory@evil.test>",
    "alice@example.com\x00<mallory@evil.test>",
    "alice@example.com\r\n<mallory@evil.test>",
    "alice@example.com\n<mallory@evil.test>",
    "group: alice@example.com;",
    "group: alice@example.com, mallory@evil.test;",
    "undisclosed-recipients:;",
    "(alice@example.com) mallory@evil.test",
    "mallory@evil.test (alice@example.com)",
    "Alice (alice@example.com) <mallory@evil.test>",
    '"alice@example.com\\" <mallory@evil.test>',
    '"Alice \\"alice@example.com\\"" <mallory@evil.test>',
    "<alice@example.com><mallory@evil.test>",
    "<alice@example.com> <mallory@evil.test>",
    "Alice <alice@example.com> mallory@evil.test",
    "alice@[192.0.2.1]",
    '"alice@example.com"@evil.test',
    '"mallory"@example.com',
    "alice\\@example.com@evil.test",
    "alice@example.com@evil.test",
    "alice@example.com.evil.test.",
    "alice@ex ample.com",
    "<alice@example.com",
    "alice@example.com>",
    "Alice <alice@example.com>,",
    "alice@example.com;",
    "alice@ex\u0430mple.com",
    "=?utf-8?B?QWxpY2U=?= =?utf-8?B?PGFsaWNlQGV4YW1wbGUuY29tPg==?= <mallory@evil.test>",
    "a@b (nested (alice@example.com))",
    "",
    "<>",
]


@pytest.mark.parametrize("value", TRICKY)
def test_no_ambiguous_from_passes(value: str) -> None:
    assert header_from([value]).problem, value


def test_two_from_headers_are_refused_even_when_equal() -> None:
    assert "2 From headers" in header_from(["alice@example.com", "alice@example.com"]).problem


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice <alice@example.com>", "alice@example.com"),
        ('"Smith, Alice" <alice@example.com>', "alice@example.com"),
        ("Alice (home) <alice@example.com>", "alice@example.com"),
        ("=?utf-8?q?Al=C3=AFce?= <alice@example.com>", "alice@example.com"),
        ("Alice\n\t<alice@example.com>", "alice@example.com"),
        ("A. Smith <a.smith+x@mail.example.com>", "a.smith+x@mail.example.com"),
    ],
)
def test_ordinary_from_values_pass(value: str, address: str) -> None:
    result = header_from([value])
    assert (result.address, result.problem) == (address, "")


CORPUS = SHARED / "corpora" / "malformed-email"


def corpus_messages() -> list[Path]:
    return sorted(
        p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".txt", ".eml", ".mbox", "")
    )


def test_every_malformed_message_goes_through_the_engine_without_an_exception() -> None:
    policy = POLICY
    count = 0
    for path in corpus_messages():
        if "LICENSE" in path.name:
            continue
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        headers = tuple(
            (str(k), v if isinstance(v, str) else str(v))
            for k, v in msg.raw_items()  # type: ignore[attr-defined]
        )
        raw_from = [v for k, v in headers if k.lower() == "from"]
        sender = raw_from[0] if raw_from else ""
        for login, local in (("alice@example.com", False), ("", True)):
            f = Facts(
                auth_login=login,
                local_submission=local,
                mail_from="alice@example.com",
                rcpts=("x@r.test",),
                headers=headers,
                client_port=0 if local else 1,
            )
            v = evaluate(f, policy, NOW)  # must not raise
            assert v.action in Action
        assert isinstance(header_from(raw_from).problem, str), sender
        count += 1
    assert count >= 120
