"""Bulk-sender rules, table-driven: what makes mail bulk, and what bulk mail needs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postwarden.config.models import BulkSection, DomainPolicy, Policy, UserPolicy
from postwarden.policy import Action, Facts, evaluate

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={"example.com": DomainPolicy(), "news.example": DomainPolicy(bulk=True)},
    users={
        "list@example.com": UserPolicy(bulk=True),
        "n@news.example": UserPolicy(send_as=["*@news.example"]),
    },
    outbound=["sasl"],
)
ONE_CLICK = (
    ("List-Unsubscribe", "<https://example.com/u/1>, <mailto:u@example.com>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
)


def run(
    headers: tuple[tuple[str, str], ...],
    login: str = "a@example.com",
    rcpts: int = 1,
    policy: Policy = POLICY,
) -> list[str]:
    frm = login if "@" in login else "a@example.com"
    f = Facts(
        auth_login=login,
        client_port=1,
        mail_from=frm,
        rcpts=tuple(f"r{i}@x.test" for i in range(rcpts)),
        headers=(("From", frm), *headers),
    )
    v = evaluate(f, policy, NOW)
    return [r.text for r in v.reasons if r.check == "bulk"]


@pytest.mark.parametrize(
    ("headers", "login", "rcpts", "why"),
    [
        ((("Precedence", "bulk"),), "a@example.com", 1, "Precedence: bulk"),
        ((("Precedence", " List "),), "a@example.com", 1, "Precedence: list"),
        ((("List-Id", "<l.example.com>"),), "a@example.com", 1, "it has a List-Id"),
        ((), "a@example.com", 51, "51 recipients, more than 50"),
        ((), "list@example.com", 1, "list@example.com is marked bulk"),
        ((), "n@news.example", 1, "news.example is marked bulk"),
    ],
)
def test_bulk_without_one_click_is_refused_naming_what_is_missing(
    headers, login, rcpts, why
) -> None:  # type: ignore[no-untyped-def]
    [text] = run(headers, login, rcpts)
    assert text == (
        f"bulk mail ({why}) needs one-click unsubscribe (RFC 8058): add List-Unsubscribe with an"
        " https URI and List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    )
    assert run(headers + ONE_CLICK, login, rcpts) == []


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        (
            (("List-Unsubscribe", "<mailto:u@example.com>"), ONE_CLICK[1]),
            "add an https URI in List-Unsubscribe",
        ),
        (
            (("List-Unsubscribe", "https://example.com/u/1"), ONE_CLICK[1]),
            "add an https URI in List-Unsubscribe",
        ),
        ((ONE_CLICK[0],), "add List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        (
            (ONE_CLICK[0], ("List-Unsubscribe-Post", "List-Unsubscribe=Two-Click")),
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ),
    ],
)
def test_each_missing_part_is_named(extra, missing: str) -> None:  # type: ignore[no-untyped-def]
    [text] = run((("List-Id", "<l>"), *extra))
    assert text.endswith(missing)


def test_not_bulk_needs_nothing_and_the_rule_can_be_switched_off() -> None:
    assert run(()) == [] and run((), rcpts=50) == []
    off = POLICY.model_copy(update={"bulk": BulkSection(require_one_click_unsubscribe=False)})
    assert run((("List-Id", "<l>"),), policy=off) == []


def test_on_violation_sets_the_action() -> None:
    held = POLICY.model_copy(update={"bulk": BulkSection(on_violation="quarantine")})
    f = Facts(
        auth_login="a@example.com",
        client_port=1,
        mail_from="a@example.com",
        rcpts=("r@x.test",),
        headers=(("From", "a@example.com"), ("List-Id", "<l>")),
    )
    assert evaluate(f, held, NOW).action == Action.QUARANTINE
