"""The TUI's non-UI parts, table-driven: the filter language, the decision filters over a
real SQLite file, the policy edits through tomlkit, and checking an edit with the loader."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from postwarden import policyedit
from postwarden.config import ConfigError, load_config
from postwarden.store.queries import point_in_time as when
from postwarden.tui.backend import Backend, DecisionFilter
from tests.tui.seed import FROZEN, POLICY, backend

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", DecisionFilter()),
        ("invoice", DecisionFilter(text="invoice")),
        ("action:reject", DecisionFilter(action="reject")),
        (
            "sender:sasl:alice@example.com since:2h big invoice",
            DecisionFilter(sender="sasl:alice@example.com", since="2h", text="big invoice"),
        ),
        (
            "domain:example.net reason:rate.locked",
            DecisionFilter(domain="example.net", reason="rate.locked"),
        ),
        ("until:2026-11-23T10:00", DecisionFilter(until="2026-11-23T10:00")),
        ("10:30", DecisionFilter(text="10:30")),  # not key:value: free text
    ],
)
def test_filter_language(query: str, expected: DecisionFilter) -> None:
    assert DecisionFilter.parse(query) == expected


def test_an_unknown_filter_key_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match='unknown filter "sendr:"; use sender, domain'):
        DecisionFilter.parse("sendr:alice")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", "2026-11-23T11:45:00+00:00"),
        ("2h", "2026-11-23T10:00:00+00:00"),
        ("1d", "2026-11-22T12:00:00+00:00"),
        ("2026-11-23T10:00", "2026-11-23T10:00:00+00:00"),
        ("2026-11-23T10:00+01:00", "2026-11-23T09:00:00+00:00"),
    ],
)
def test_times(text: str, expected: str) -> None:
    assert when(text, NOW) == expected


def test_a_bad_time_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="write 15m, 2h, 7d"):
        when("yesterday", NOW)


@pytest.fixture
def seeded(tmp_path: Path) -> Backend:
    return backend(tmp_path, decisions=40)


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("", lambda rows: len(rows) == 40),
        ("action:reject", lambda rows: rows and all(r["action"] == "reject" for r in rows)),
        (
            "sender:sasl:bob@example.net",
            lambda rows: rows and all(r["identity"] == "sasl:bob@example.net" for r in rows),
        ),
        (
            "domain:example.net",
            lambda rows: (
                rows and all("example.net" in r["header_from"] + r["identity"] for r in rows)
            ),
        ),
        (
            "reason:rate",
            lambda rows: rows and all(r["reasons"][0]["check"] == "rate" for r in rows),
        ),
        (
            "reason:bulk.no_one_click",
            lambda rows: rows and all(r["reasons"][0]["code"] == "no_one_click" for r in rows),
        ),
        ("since:5m", lambda rows: len(rows) == 10),
        ("until:5m", lambda rows: len(rows) == 30),
        (
            "Invoice 1013",
            lambda rows: [r["subject"] for r in rows] == ["Invoice 1013 for November"],
        ),
        ("4Q0001AB1", lambda rows: [r["queue_id"] for r in rows] == ["4Q0001AB1"]),
    ],
)
def test_decision_filters_on_a_real_database(seeded: Backend, query: str, check: object) -> None:
    rows = seeded.decisions(DecisionFilter.parse(query), limit=100)
    assert check(rows), [(r["action"], r["identity"], r["subject"]) for r in rows]  # type: ignore[operator]


def test_decision_pages_are_newest_first_and_do_not_overlap(seeded: Backend) -> None:
    first = seeded.decisions(DecisionFilter(), limit=15)
    second = seeded.decisions(DecisionFilter(), before_id=first[-1]["id"], limit=15)
    ids = [r["id"] for r in first + second]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 30
    assert first[0]["headers"].startswith("From: ")


def test_domains_carry_keys_and_the_latest_check(seeded: Backend) -> None:
    domains = {d["domain"]: d for d in seeded.domains()}
    assert [k["algorithm"] for k in domains["example.com"]["keys"]] == ["rsa-2048", "ed25519"]
    assert {f.status for f in domains["example.net"]["findings"]} == {"fail", "warn"}
    assert domains["example.net"]["include_subdomains"] is True


def test_senders_locked_first(seeded: Backend) -> None:
    rows = seeded.senders()
    assert rows[0].identity == "sasl:mallory@example.com" and rows[0].locked
    assert seeded.now() == FROZEN


# ---- policy edits ------------------------------------------------------------------------------


def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "10-test.toml"
    path.write_text(POLICY)
    return path


@pytest.mark.parametrize(
    ("form", "present", "absent"),
    [
        (
            policyedit.UserForm("mallory@example.com", messages="5/minute, 50/hour"),
            [
                '[users."mallory@example.com"]    # a small cap, to show a lock\n'
                'rate = { messages = ["5/minute", "50/hour"] }\n'
            ],
            [],
        ),
        (
            policyedit.UserForm("mallory@example.com"),  # blank rate: inherited again
            ['[users."mallory@example.com"]    # a small cap, to show a lock'],
            ["5/minute"],
        ),
        (
            policyedit.UserForm(
                "new@example.com", send_as="new@example.com, *@example.net", recipients="9/minute"
            ),
            [
                '[users."new@example.com"]\nsend_as = ["new@example.com", "*@example.net"]\nrate = {recipients = ["9/minute"]}\n\n'
            ],
            [],
        ),
        (
            policyedit.DomainForm(
                "example.net", include_subdomains=False, keys="s1 keys/s1.key staged"
            ),
            ['{selector = "s1", file = "keys/s1.key", active = false}'],
            ["include_subdomains = true"],
        ),
        (
            policyedit.DefaultsForm("strict", "quarantine", "{login}"),
            [
                'alignment = "strict"',
                'unknown_from_domain = "quarantine"   # a From domain not hosted here is refused',
            ],
            ['alignment = "relaxed"'],
        ),
    ],
)
def test_policy_edits_keep_everything_else(
    tmp_path: Path, form: policyedit.Form, present: list[str], absent: list[str]
) -> None:
    before = policy_file(tmp_path).read_text()
    after = policyedit.apply(before, form)
    for text in present:
        assert text in after
    for text in absent:
        assert text not in after
    assert "# Seeded policy for the TUI tests" in after
    assert after.count("[rate]") == 1 and 'recipients = ["200/minute", "5000/day"]' in after


def test_an_unchanged_form_changes_nothing(tmp_path: Path) -> None:
    path = policy_file(tmp_path)
    for entry in policyedit.entries(tmp_path):
        assert policyedit.apply(path.read_text(), policyedit.read_form(entry)) == POLICY


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("s1", 'keys, line 1: write "selector file"'),
        ("s1 a.key maybe", 'keys, line 1: write "selector file"'),
    ],
)
def test_a_malformed_keys_line_is_a_form_error(keys: str, message: str) -> None:
    with pytest.raises(policyedit.FormError, match=message):
        policyedit.apply(POLICY, policyedit.DomainForm("example.com", keys=keys))


def test_the_loader_checks_new_text_before_it_is_written(seeded: Backend) -> None:
    file = seeded.policy_files()[0]
    before = file.read_text()
    bad = policyedit.apply(before, policyedit.UserForm("mallory@example.com", send_as="nobody"))
    problems = [str(p) for p in seeded.check_edit(file, bad)]
    assert problems == [
        f'{file}: users."mallory@example.com".send_as[0]: "nobody" is not a send_as pattern:'
        " use an address, *@domain, *@*.domain or {login} (got 'nobody')"
    ]
    result = seeded.save_and_reload(file, bad)
    assert result.code == 78 and "nobody" in result.message
    assert not result.written
    assert file.read_text() == before  # refused: nothing written
    good = policyedit.apply(before, policyedit.UserForm("mallory@example.com", messages="7/minute"))
    result = seeded.save_and_reload(file, good)
    assert (
        result.code == 75 and "not running" in result.message
    )  # saved, but no daemon here to reload
    assert '"7/minute"' in file.read_text()
    assert seeded.config.policy.users["mallory@example.com"].rate.messages == ["7/minute"]  # type: ignore[union-attr]


def test_a_new_file_given_as_text_is_loaded_too(tmp_path: Path) -> None:
    seeded = backend(tmp_path)
    new = Path(seeded.config.daemon.policies) / "30-new.toml"
    with pytest.raises(ConfigError, match=r"30-new.toml: users.x.bulk"):
        load_config(seeded.config_path, overrides={new: '[users."x"]\nbulk = "yes"\n'})
    assert not new.exists()
