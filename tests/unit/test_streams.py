"""Streams, pacing and warm-up in the pure engine and scheduler (streams.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from postwarden.config.models import (
    BulkStream,
    DomainPolicy,
    DomainStreams,
    Policy,
    StreamsSection,
    UserPolicy,
    WarmupEntry,
)
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.model import RateState, Schedule, StreamHeader, WarmupCount
from postwarden.policy.streams import (
    PaceState,
    Waiting,
    choose,
    due_times,
    provider_group,
    spacing,
    warmup_charges,
)

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
BULK_HEADERS = (
    ("List-Unsubscribe", "<https://example.com/u>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("Precedence", "bulk"),
)


def policy(pace: str = "", warmup: dict[str, WarmupEntry] | None = None) -> Policy:
    return Policy(
        domains={
            "example.com": DomainPolicy(
                include_subdomains=True, streams=DomainStreams(bulk="news.example.com")
            ),
        },
        users={"alice@example.com": UserPolicy(send_as=["*@example.com", "*@news.example.com"])},
        streams=StreamsSection(bulk=BulkStream(pace=pace)),
        warmup=warmup or {},
        hash="h",
    )


def facts(frm: str = "alice@example.com", bulk: bool = False, rcpts: tuple[str, ...] = ()) -> Facts:
    headers = (("From", f"<{frm}>"), ("Date", "x"), ("Message-ID", "<1@x>"))
    return Facts(
        auth_login="alice@example.com",
        client_addr="198.51.100.7",
        client_port=40000,
        mail_from="alice@example.com",
        rcpts=rcpts or ("bob@remote.test",),
        headers=headers + (BULK_HEADERS if bulk else ()),
    )


def test_every_outbound_decision_has_a_stream_and_the_header_is_planned() -> None:
    p = Policy(domains={"example.com": DomainPolicy()}, hash="h")
    t = evaluate(facts(), p, NOW)
    b = evaluate(facts(bulk=True), p, NOW)
    assert (t.stream, b.stream) == ("transactional", "bulk")
    assert t.of(StreamHeader) == [StreamHeader("transactional")]
    assert b.of(StreamHeader) == [StreamHeader("bulk")]


def test_bulk_from_the_main_domain_is_refused_naming_the_subdomain() -> None:
    v = evaluate(facts(bulk=True), policy(), NOW)
    assert v.action == Action.REJECT
    assert [r.key for r in v.reasons] == ["streams.bulk_domain"]
    assert "news.example.com" in v.reply()[2]  # type: ignore[index]
    ok = evaluate(facts("news@news.example.com", bulk=True), policy(), NOW)
    assert ok.action == Action.ACCEPT and ok.stream == "bulk"
    # transactional mail from the main domain is fine
    assert evaluate(facts(), policy(), NOW).action == Action.ACCEPT


def test_paced_bulk_is_held_on_the_schedule() -> None:
    v = evaluate(facts("news@news.example.com", bulk=True), policy(pace="60/minute"), NOW)
    assert v.action == Action.QUARANTINE
    assert [r.key for r in v.deciding_reasons()] == ["pace.paced"]
    assert v.of(Schedule) == [Schedule(True, ())]
    assert evaluate(facts(), policy(pace="60/minute"), NOW).action == Action.ACCEPT


def test_a_locked_sender_is_not_put_on_the_schedule() -> None:
    from postwarden.policy.model import Lock

    state = RateState(lock=Lock("sasl:alice@example.com", "t", "messages 1/minute", "Q"))
    v = evaluate(facts("news@news.example.com", bulk=True), policy(pace="60/minute"), NOW, state)
    assert v.action == Action.QUARANTINE
    assert v.of(Schedule) == []


WARM = {"example.com": WarmupEntry(start=date(2026, 12, 1), daily=[5, 10])}


def test_warmup_charges_count_recipients_per_group() -> None:
    p = policy(warmup=WARM)
    assert provider_group("hotmail.co.uk", p.provider_groups()) == "microsoft"
    assert provider_group("hotmail", p.provider_groups()) is None
    rcpts = ("a@gmail.com", "b@GoogleMail.com", "c@remote.test", "d@live.fr")
    assert warmup_charges(p, "example.com", rcpts) == (
        ("example.com", "gmail", 2),
        ("example.com", "microsoft", 1),
    )


def test_warmup_holds_past_the_allowance_and_counts_what_leaves() -> None:
    p = policy(warmup=WARM)
    f = facts(rcpts=("a@gmail.com",))
    state = RateState(warmup_today="2026-12-01", warmup=(("example.com", "gmail", 4, 0),))
    v = evaluate(f, p, NOW, state)
    assert v.action == Action.ACCEPT
    assert v.of(WarmupCount) == [WarmupCount((("example.com", "gmail", 1),))]
    full = RateState(warmup_today="2026-12-01", warmup=(("example.com", "gmail", 5, 0),))
    v = evaluate(f, p, NOW, full)
    assert [r.key for r in v.reasons] == ["warmup.paced"]
    assert v.of(Schedule) == [Schedule(False, (("example.com", "gmail", 1),))]
    # day 2 allows 10; but held mail waiting goes first
    waiting = RateState(warmup_today="2026-12-02", warmup=(("example.com", "gmail", 0, 3),))
    assert evaluate(f, p, NOW, waiting).action == Action.QUARANTINE
    # other providers unaffected
    assert evaluate(facts(rcpts=("x@remote.test",)), p, NOW, full).action == Action.ACCEPT
    # after the schedule, no limit
    late = RateState(warmup_today="2026-12-09", warmup=(("example.com", "gmail", 999, 0),))
    assert evaluate(f, p, NOW, late).action == Action.ACCEPT


def _w(i: int, pace: bool = True, charges: tuple[tuple[str, str, int], ...] = ()) -> Waiting:
    return Waiting(f"Q{i}", i, 1000.0 + i, "sasl:x", pace, charges)


def test_choose_releases_one_paced_message_per_slot_and_never_past_n() -> None:
    p = policy(pace="60/minute")
    rows = [_w(i) for i in range(10)]
    gap = spacing(60, 60)
    assert gap > 1.0
    assert [
        w.queue_id for w in choose(rows, p, PaceState(0, 0.0), {}, date(2026, 12, 1), 5000)
    ] == ["Q0"]
    assert choose(rows, p, PaceState(1, 5000.0), {}, date(2026, 12, 1), 5000.5) == []
    assert len(choose(rows, p, PaceState(1, 5000.0), {}, date(2026, 12, 1), 5000 + 9 * gap)) == 1
    assert choose(rows, p, PaceState(60, 5000.0), {}, date(2026, 12, 1), 5000 + 5 * gap) == []


def test_choose_warmup_oldest_first_per_group() -> None:
    p = policy(warmup=WARM)
    g = (("example.com", "gmail", 1),)
    big = (("example.com", "gmail", 3),)
    rows = [_w(0, False, big), _w(1, False, g), _w(2, False, (("example.com", "microsoft", 1),))]
    day1 = date(2026, 12, 1)
    out = choose(rows, p, PaceState(0, 0.0), {("example.com", "gmail"): 3}, day1, 5000)
    assert [w.queue_id for w in out] == ["Q2"]  # Q1 does not overtake Q0
    out = choose(rows, p, PaceState(0, 0.0), {}, day1, 5000)
    assert [w.queue_id for w in out] == ["Q0", "Q1", "Q2"]


def test_due_times_paced_one_slot_apart_and_warmup_next_day() -> None:
    p = policy(pace="60/minute", warmup=WARM)
    now = NOW.timestamp()
    rows = [_w(0), _w(1), _w(2, False, (("example.com", "gmail", 1),))]
    due = due_times(
        rows, p, PaceState(1, now), {("example.com", "gmail"): 5}, date(2026, 12, 1), now
    )
    gap = spacing(60, 60)
    assert abs(due["Q0"].timestamp() - (now + gap)) < 1e-6
    assert abs(due["Q1"].timestamp() - (now + 2 * gap)) < 1e-6
    assert due["Q2"] == datetime(2026, 12, 2, tzinfo=UTC)


def test_the_schedule_in_sqlite_claim_unclaim_forget(tmp_path: Path) -> None:
    from postwarden.store import migrate, open_db, pacing

    migrate(open_db(tmp_path / "p.db"))
    conn = pacing.connect(tmp_path / "p.db")
    g = (("example.com", "gmail", 2),)
    with pacing.transaction(conn):
        pacing.enqueue(conn, "Q1", 10.0, "sasl:a", True, ())
        pacing.enqueue(conn, "Q2", 11.0, "sasl:a", False, g)
        pacing.enqueue(conn, "Q1", 12.0, "sasl:a", True, ())  # once only
        pacing.add_warmup(conn, "2026-12-01", [("example.com", "gmail", 3)])
    assert [r[0] for r in pacing.waiting(conn)] == ["Q1", "Q2"]
    assert pacing.warmup_state(conn, "2026-12-01") == (("example.com", "gmail", 3, 2),)
    with pacing.transaction(conn):
        pacing.claim(conn, [("Q1", True, ()), ("Q2", False, g)], 100.0, "2026-12-01")
    assert [r[6] for r in pacing.waiting(conn)] == ["releasing", "releasing"]
    assert pacing.pace_state(conn, 60, 120.0) == (1, 100.0)
    assert pacing.sent_on(conn, "2026-12-01") == {("example.com", "gmail"): 5}
    with pacing.transaction(conn):  # Postfix did not have them: undo
        pacing.unclaim(conn, [("Q1", True, ())], 100.0, "2026-12-01", drop=False)
        pacing.unclaim(conn, [("Q2", False, g)], 100.0, "2026-12-01", drop=True)
    assert [(r[0], r[6]) for r in pacing.waiting(conn)] == [("Q1", "held")]
    assert pacing.pace_state(conn, 60, 120.0) == (0, 0.0)
    assert pacing.sent_on(conn, "2026-12-01") == {("example.com", "gmail"): 3}
    with pacing.transaction(conn):
        assert pacing.forget(conn, ["Q1", "Q9"]) == 1
    assert pacing.waiting(conn) == []


def test_bulk_waiting_for_its_pace_does_not_hold_transactional_mail_back(tmp_path: Path) -> None:
    from postwarden.store import migrate, open_db, pacing

    migrate(open_db(tmp_path / "p.db"))
    conn = pacing.connect(tmp_path / "p.db")
    with pacing.transaction(conn):
        pacing.enqueue(conn, "Q1", 10.0, "local:app", True, (("example.com", "gmail", 1),))
    state = RateState(warmup_today="2026-12-01", warmup=pacing.warmup_state(conn, "2026-12-01"))
    assert state.warmup_of("example.com", "gmail") == (0, 0)
    v = evaluate(facts(rcpts=("a@gmail.com",)), policy(warmup=WARM), NOW, state)
    assert v.action == Action.ACCEPT


def test_a_server_warmup_counts_every_from_domain() -> None:
    p = policy(warmup={"server": WarmupEntry(start=date(2026, 12, 1), daily=[1])})
    assert warmup_charges(p, "news.example.com", ("a@gmail.com", "b@yahoo.co.uk")) == (
        ("server", "gmail", 1),
        ("server", "yahoo", 1),
    )
    full = RateState(warmup_today="2026-12-01", warmup=(("server", "yahoo", 1, 0),))
    v = evaluate(facts(rcpts=("b@yahoo.co.uk",)), p, NOW, full)
    assert [r.key for r in v.reasons] == ["warmup.paced"] and "server to yahoo" in v.reasons[0].text
