"""Domain names and [users] logins are compared without regard to case (config.md, issue 13
point 12): two spellings of one name are an error naming both places, never a silent merge, and
stored names are lower case so later lookups are exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.config import ConfigError, load_config
from postwarden.config.models import Policy, UserPolicy
from tests.helpers import write_config

ONE_FILE = {
    "domains": (
        '[domains."example.com"]\n[domains."EXAMPLE.COM"]\n',
        'domains."EXAMPLE.COM": domain "EXAMPLE.COM" is already defined in this file as [domains."example.com"]',
    ),
    "domains, mixed case": (
        '[domains."Example.Org"]\n[domains."example.ORG"]\n',
        'domains."example.ORG": domain "example.ORG" is already defined in this file as [domains."Example.Org"]',
    ),
    "users": (
        '[domains."example.com"]\n[users."alice@example.com"]\nsend_as = ["alice@example.com"]\n'
        '[users."Alice@Example.COM"]\nsend_as = ["*@example.com"]\n',
        'users."Alice@Example.COM": user "Alice@Example.COM" is already defined in this file as [users."alice@example.com"]',
    ),
}


@pytest.mark.parametrize("case", sorted(ONE_FILE))
def test_two_spellings_in_one_file_are_an_error_naming_both(tmp_path: Path, case: str) -> None:
    policy, expected = ONE_FILE[case]
    cfg = write_config(tmp_path, policy)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    problems = [str(p) for p in exc.value.problems]
    assert problems == [
        f"{tmp_path / 'policies' / '10-test.toml'}: {expected} (names are compared without regard to case)"
    ]


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        ('[domains."example.com"]\n', '[domains."EXAMPLE.COM"]\n', 'domains."EXAMPLE.COM"'),
        ('[users."bob@example.com"]\n', '[users."BOB@example.com"]\n', 'users."BOB@example.com"'),
        ('[users."Carol"]\n', '[users."carol"]\n', "users.carol"),
    ],
)
def test_two_spellings_in_two_files_name_both_files(
    tmp_path: Path, first: str, second: str, key: str
) -> None:
    cfg = write_config(tmp_path, '[domains."example.net"]\n' + first)
    (tmp_path / "policies" / "20-more.toml").write_text(second)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    (problem,) = [str(p) for p in exc.value.problems]
    assert problem.startswith(f"{tmp_path / 'policies' / '20-more.toml'}: {key}: ")
    assert f"already defined in {tmp_path / 'policies' / '10-test.toml'} as" in problem


def test_names_are_stored_in_lower_case(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            '[domains."Example.COM"]\n[users."Alice@Example.COM"]\nsend_as = ["alice@example.com"]\n',
        )
    )
    assert list(cfg.policy.domains) == ["example.com"]
    assert list(cfg.policy.users) == ["alice@example.com"]
    assert cfg.policy.hosted_domain("EXAMPLE.com") == "example.com"
    # and a Policy built in code (tests, the TUI) keeps the same rule
    assert list(Policy(users={"Bob@X.example": UserPolicy()}).users) == ["bob@x.example"]
