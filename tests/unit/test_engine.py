"""The pure engine, table-driven: what each message gets and why."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest

from postwarden.config.models import DefaultsSection, DomainPolicy, Policy
from postwarden.policy import Action, Facts, Reason, evaluate
from postwarden.policy.registry import Check, checks, register

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={"example.com": DomainPolicy(), "example.net": DomainPolicy(include_subdomains=True)},
    outbound=["sasl", "local", "daemon:ORIGINATING", "network:192.0.2.0/24"],
    hash="h",
)


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "auth_login": "alice@example.com",
        "client_addr": "198.51.100.7",
        "client_port": 40000,
        "mail_from": "alice@example.com",
        "rcpts": ("bob@remote.test",),
        "headers": (("From", "Alice <alice@example.com>"),),
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "outbound", "identity"),
    [
        ({}, True, "sasl:alice@example.com"),
        (
            {"auth_login": "", "local_submission": True, "client_port": 0},
            True,
            "local:alice@example.com",
        ),
        (
            {"auth_login": "", "local_submission": True, "local_user": "www-data"},
            True,
            "local:www-data",
        ),
        ({"auth_login": "", "daemon_name": "ORIGINATING"}, True, "ip:198.51.100.7"),
        ({"auth_login": "", "client_addr": "192.0.2.9"}, True, "ip:192.0.2.9"),
        ({"auth_login": ""}, False, "ip:198.51.100.7"),  # inbound: no rule matches
        ({"auth_login": "", "daemon_name": "smtp"}, False, "ip:198.51.100.7"),
    ],
)
def test_outbound_rules_and_identity(kw: dict[str, object], outbound: bool, identity: str) -> None:
    v = evaluate(facts(**kw), POLICY, NOW)
    assert v.outbound is outbound
    assert v.identity == identity
    if not outbound:
        assert v.action == Action.ACCEPT
        assert [r.key for r in v.reasons] == ["outbound.inbound"]


@pytest.mark.parametrize(
    ("from_header", "action", "codes"),
    [
        ("Alice <alice@example.com>", Action.ACCEPT, []),
        ("alice@EXAMPLE.com", Action.ACCEPT, []),
        ("news@lists.example.net", Action.ACCEPT, []),  # include_subdomains
        ("x@sub.example.com", Action.REJECT, ["from_domain.not_hosted"]),  # no include_subdomains
        ("Alice <alice@example.org>", Action.REJECT, ["from_domain.not_hosted"]),
        ("alice@example.com.evil.test", Action.REJECT, ["from_domain.not_hosted"]),
        ('"alice@example.com" <mallory@evil.test>', Action.REJECT, ["from_domain.unreadable"]),
        ("a@example.com, b@example.com", Action.REJECT, ["from_domain.unreadable"]),
        ("undisclosed", Action.REJECT, ["from_domain.unreadable"]),
        ("", Action.REJECT, ["from_domain.unreadable"]),
    ],
)
def test_from_domain_must_be_hosted(from_header: str, action: Action, codes: list[str]) -> None:
    # A network-rule sender with a null envelope: no send_as rules, nothing to align.
    f = facts(
        headers=(("From", from_header),), auth_login="", client_addr="192.0.2.9", mail_from=""
    )
    v = evaluate(f, POLICY, NOW)
    assert v.action == action
    assert [r.key for r in v.reasons] == codes


def test_two_from_headers_and_none_are_unreadable() -> None:
    two = facts(headers=(("From", "a@example.com"), ("from", "b@example.com")))
    assert [r.key for r in evaluate(two, POLICY, NOW).reasons] == ["from_domain.unreadable"]
    assert [r.key for r in evaluate(facts(headers=()), POLICY, NOW).reasons] == [
        "from_domain.unreadable"
    ]


@pytest.mark.parametrize("setting", ["reject", "tempfail", "quarantine", "accept"])
def test_unknown_from_domain_action_is_configurable(setting: str) -> None:
    policy = POLICY.model_copy(update={"defaults": DefaultsSection(unknown_from_domain=setting)})  # type: ignore[arg-type]
    v = evaluate(facts(headers=(("From", "x@elsewhere.test"),)), policy, NOW)
    assert str(v.action) == setting


def test_reject_reply_tells_the_sender_what_to_fix() -> None:
    v = evaluate(facts(headers=(("From", "Bob <bob@example.org>"),)), POLICY, NOW)
    code, xcode, text = v.reply()  # type: ignore[misc]
    assert (code, xcode) == ("550", "5.7.1")
    assert text == (
        "From <bob@example.org>: domain example.org is not hosted on this server;"
        " send from one of its domains"
    )
    assert evaluate(facts(), POLICY, NOW).reply() is None


def test_strictest_action_wins() -> None:
    assert sorted(Action, reverse=True) == [
        Action.REJECT,
        Action.TEMPFAIL,
        Action.QUARANTINE,
        Action.ACCEPT,
    ]
    from postwarden.policy.model import Verdict

    reasons = (
        Reason("a", "x", Action.QUARANTINE, "q"),
        Reason("b", "y", Action.TEMPFAIL, "t"),
        Reason("c", "z", Action.ACCEPT, "ok"),
    )
    v = Verdict(action=max(r.action for r in reasons), reasons=reasons)
    assert v.action == Action.TEMPFAIL
    assert v.reply() == ("451", "4.7.1", "t")


def test_evaluate_is_pure_and_deterministic() -> None:
    f = facts(headers=(("From", "x@elsewhere.test"),))
    assert evaluate(f, POLICY, NOW) == evaluate(f, POLICY, NOW)


def test_a_check_name_registered_twice_fails_at_import() -> None:
    existing = checks()[0].name
    with pytest.raises(ValueError, match="registered twice"):
        register(existing, order=999, codes={"x": "y"})(lambda ctx: [])


def test_checks_run_in_order_and_declare_their_codes() -> None:
    names = [c.name for c in checks()]
    assert names[:2] == ["outbound", "from_domain"]
    for c in checks():
        assert isinstance(c, Check)
        assert c.codes, f"{c.name} declares no reason codes"


def test_each_check_module_declares_its_settings_and_codes_as_data() -> None:
    """rspamd's way: a check's module opens with its name, defaults and reason codes."""
    for c in checks():
        module = importlib.import_module(c.fn.__module__)
        assert c.name == module.NAME
        assert dict(c.codes) == module.CODES
        assert dict(c.defaults) == module.DEFAULTS
        assert all(isinstance(t, str) and t for t in module.CODES.values())


def test_a_check_without_reason_codes_is_refused() -> None:
    with pytest.raises(ValueError, match="declares no reason codes"):
        register("nameless", order=999, codes={})
