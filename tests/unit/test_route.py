"""One route per message (policy/route.py): what the milter enforces is what `senders` shows.

A table over the one route function: for each kind of identity, the caps the rate check uses
(route(facts).caps) equal the caps `postwarden senders` shows for that identity
(senders.statuses, which sees only the identity), with a [domains] and a [users] override.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from postwarden.config import load_config
from postwarden.policy import Facts
from postwarden.policy.route import caps_for, route
from postwarden.senders import statuses
from postwarden.store import open_db
from postwarden.store.migrations import migrate
from postwarden.store.rates import RateStore
from tests.helpers import write_config

POLICY = """
[domains."example.com"]
rate = { messages = ["5/minute"] }

[domains."example.org"]

[users."Boss@Example.org"]
rate = { recipients = ["7/day"] }

[local]
send_as = { "www-data" = ["contact@example.com", "*@forms.example.com"], "root" = ["<>", "*@example.org"] }

[rate]
messages = ["30/minute", "500/hour", "2000/day"]
recipients = ["200/minute", "5000/day"]
"""
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEFAULT_MSGS = ["30/minute", "500/hour", "2000/day"]


def _facts(**kw: object) -> Facts:
    return Facts(**kw)  # type: ignore[arg-type]


CASES = [
    # (facts, identity, message caps, recipient caps)
    (
        _facts(auth_login="alice@example.com"),
        "sasl:alice@example.com",
        ["5/minute", "500/hour", "2000/day"],  # the domain's 5/minute replaces 30/minute only
        ["200/minute", "5000/day"],
    ),
    (
        _facts(auth_login="ALICE@Example.COM"),
        "sasl:alice@example.com",
        ["5/minute", "500/hour", "2000/day"],
        ["200/minute", "5000/day"],
    ),
    (
        # A login that is not an address: no domain to take an override from, whatever the
        # envelope sender says (an identity has one set of caps).
        _facts(auth_login="alice", mail_from="alice@example.com"),
        "sasl:alice",
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
    (
        _facts(auth_login="boss@example.org"),
        "sasl:boss@example.org",
        DEFAULT_MSGS,
        ["200/minute", "7/day"],  # [users] key in another case is the same entry
    ),
    (
        _facts(local_submission=True, mail_from="CONTACT@Example.com"),
        "local:www-data",
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
    (
        _facts(local_submission=True, mail_from="x1@forms.example.com"),
        "local:www-data",  # a wildcard grant is one sender, not one bucket per address
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
    (
        _facts(local_submission=True, mail_from=""),
        "local:root",  # the null sender names the user that lists "<>"
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
    (
        _facts(local_submission=True, mail_from="nobody@elsewhere.test"),
        "local:nobody@elsewhere.test",
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
    (
        _facts(client_addr="192.0.2.7", mail_from="alice@example.com"),
        "ip:192.0.2.7",
        DEFAULT_MSGS,
        ["200/minute", "5000/day"],
    ),
]


def _sorted(specs: list[str]) -> list[str]:
    from postwarden.config.models import parse_rate

    return sorted(specs, key=lambda s: parse_rate(s)[1])


@pytest.mark.parametrize(("facts", "identity", "messages", "recipients"), CASES)
def test_route_and_senders_agree(
    tmp_path: Path, facts: Facts, identity: str, messages: list[str], recipients: list[str]
) -> None:
    policy = load_config(
        write_config(tmp_path, POLICY, outbound='["sasl", "local", "network:192.0.2.0/24"]')
    ).policy
    r = route(facts, policy)
    assert r.outbound and r.identity == identity
    assert [c[2] for c in r.caps.messages] == _sorted(messages)
    assert [c[2] for c in r.caps.recipients] == _sorted(recipients)
    assert caps_for(identity, policy) == r.caps
    # What `postwarden senders` shows for that identity, once it has sent one message.
    db_path = tmp_path / "s.db"
    migrate(open_db(db_path))
    windows = sorted({w for _, w, _ in (*r.caps.messages, *r.caps.recipients)})
    with RateStore(db_path).transaction(identity, windows, NOW) as tx:
        tx.count(1, "Q1")
    [shown] = statuses(open_db(db_path), policy, NOW)
    assert shown.identity == identity
    assert [m["cap"] for m in shown.messages] == [c[2] for c in r.caps.messages]
    assert [m["limit"] for m in shown.messages] == [c[0] for c in r.caps.messages]
    assert [m["cap"] for m in shown.recipients] == [c[2] for c in r.caps.recipients]
    assert all(m["used"] == 1 for m in shown.messages)


def test_inbound_has_no_outbound_rule(tmp_path: Path) -> None:
    policy = load_config(write_config(tmp_path, POLICY)).policy
    assert route(_facts(client_addr="198.51.100.1"), policy).outbound_rule is None


def test_check_config_warns_of_overlapping_local_grants(tmp_path: Path) -> None:
    from postwarden.policy.route import local_overlaps

    policy = load_config(
        write_config(
            tmp_path,
            '[local]\nsend_as = { "alice" = ["alice@example.com"], "www-data" = ["*@example.com"],'
            ' "root" = ["*@*.example.net"], "cron" = ["cron@mail.example.net"] }\n',
        )
    ).policy
    found = local_overlaps(policy)
    assert len(found) == 2, found
    assert '"www-data" and "alice" both match alice@example.com' in found[0]
    assert '"cron" and "root" both match cron@mail.example.net' in found[1]
