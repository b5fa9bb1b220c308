"""evaluate(..., earlier=) reruns only the checks that read the rate state: its verdict is, for
every message and every rate state, the one a fresh evaluate gives (issue 21).

The facts are the other unit tests' (engine, rate, streams, bulk, identity, headers, repair,
feedback) and the fuzz test's random messages; the rate states are each cap of the message's
route just under and just over, the sender locked, and warm-up full, waiting and done.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwarden.config.models import (
    BulkSection,
    BulkStream,
    DomainPolicy,
    HeadersSection,
    Policy,
    RateSection,
    StreamsSection,
    WarmupEntry,
)
from postwarden.policy import Facts, Verdict, engine, evaluate, registry
from postwarden.policy.model import Lock, RateState, Reason, Suppression
from postwarden.policy.route import route
from tests.unit import test_bulk as bulk_tests
from tests.unit import test_engine as engine_tests
from tests.unit import test_feedback as feedback_tests
from tests.unit import test_fuzz as fuzz_tests
from tests.unit import test_headers as headers_tests
from tests.unit import test_identity as identity_tests
from tests.unit import test_rate as rate_tests
from tests.unit import test_repair as repair_tests
from tests.unit import test_streams as streams_tests

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
LOCK = Lock("sasl:x", "2026-11-30T09:00:00+00:00", "messages 10/minute", "Q0")
WARM = {"example.com": WarmupEntry(start=date(2026, 12, 1), daily=[5, 10])}
SERVER_WARM = {"server": WarmupEntry(start=date(2026, 12, 1), daily=[1])}


def _rate_variants(policy: Policy) -> list[Policy]:
    """The policy as it is, and with each other answer to a broken cap."""
    out = [policy]
    for on_exceed, lock in (("reject", True), ("tempfail", False), ("quarantine", False)):
        rate = policy.rate.model_copy(update={"on_exceed": on_exceed, "lock": lock})
        out.append(policy.model_copy(update={"rate": rate}))
    return out


def cases() -> Iterator[tuple[str, Facts, Policy]]:
    # test_engine: outbound rules, identities, From domains
    e = engine_tests
    for kw in (
        {},
        {"auth_login": "", "local_submission": True, "client_port": 0},
        {"auth_login": "", "local_submission": True, "local_user": "www-data"},
        {"auth_login": "", "daemon_name": "ORIGINATING"},
        {"auth_login": "", "client_addr": "192.0.2.9"},
        {"auth_login": ""},  # inbound
        {"system_notice": True, "auth_login": "", "local_submission": True},
        {"headers": (("From", "x@elsewhere.test"),)},
        {"headers": (("From", "a@example.com"), ("from", "b@example.com"))},
        {"headers": ()},
        {"headers": (("From", '"alice@example.com" <mallory@evil.test>'),)},
    ):
        yield "engine", e.facts(**kw), e.POLICY
    # test_rate: caps per identity, many recipients, local mail
    r = rate_tests
    for policy in _rate_variants(r.POLICY):
        for login, n in (
            ("alice@example.org", 1),
            ("alice@example.org", 20),
            ("vip@example.com", 21),
        ):
            yield "rate", r.facts(login, n), policy
        yield "rate", r.facts("", 1, local_submission=True, mail_from="a@example.com"), policy
        yield "rate", r.facts("x@example.org", 1, headers=(("From", "x@evil.test"),)), policy
    # test_streams: bulk on its subdomain, pacing, warm-up per domain and for the server
    s = streams_tests
    for policy in (
        s.policy(),
        s.policy(pace="60/minute"),
        s.policy(warmup=WARM),
        s.policy(pace="60/minute", warmup=WARM),
        s.policy(warmup=SERVER_WARM),
    ):
        for f in (
            s.facts(),
            s.facts(bulk=True),
            s.facts("news@news.example.com", bulk=True),
            s.facts(rcpts=("a@gmail.com",)),
            s.facts(rcpts=("a@gmail.com", "b@googlemail.com", "c@yahoo.co.uk", "d@remote.test")),
            s.facts("news@news.example.com", bulk=True, rcpts=("a@gmail.com",)),
            s.facts(rcpts=("b@yahoo.co.uk",)),
        ):
            yield "streams", f, policy
    # test_bulk: one-click unsubscribe
    b = bulk_tests
    for headers, login, n in (
        ((), "a@example.com", 1),
        (b.ONE_CLICK, "a@example.com", 1),
        ((("Precedence", "bulk"),), "a@example.com", 1),
        ((("List-Id", "<l.example.com>"), *b.ONE_CLICK), "a@example.com", 1),
        ((), "a@example.com", 60),
        ((), "list@example.com", 1),
        ((), "n@news.example", 1),
    ):
        frm = login
        f = Facts(
            auth_login=login,
            client_port=1,
            mail_from=frm,
            rcpts=tuple(f"r{i}@x.test" for i in range(n)),
            headers=(("From", frm), *headers),
        )
        yield "bulk", f, b.POLICY
    # test_identity: send_as, alignment, Sender and Resent-*, tricky From values
    i = identity_tests
    for frm, mail_from, login, local in (
        ("carol@example.com", "carol@example.com", "carol@example.com", False),
        ("dave@example.com", "carol@example.com", "carol@example.com", False),
        ("x@sales.example.com", "alice@example.com", "alice@example.com", False),
        ("bob@example.net", "bob@other.example.net", "bob", False),
        ("contact@example.com", "contact@example.com", "", True),
        ("root@example.net", "root@example.net", "", True),
        ("a@example.co.uk", "a@evil.test", "a@example.co.uk", False),
        ("a@example.com", "", "", False),
    ):
        yield "identity", i.facts(frm, mail_from, login, local), i.POLICY
    for value in i.TRICKY[:12]:
        yield "identity", i.facts(value, "alice@example.com", "alice@example.com"), i.POLICY
    base = i.facts("alice@example.com", "alice@example.com", "alice@example.com")
    for extra in (
        (("Sender", "x@evil.test"),),
        (("Sender", "alice@example.com"), ("Resent-From", "a, b")),
        (("Resent-Sender", "bob@example.net"),),
    ):
        yield "identity", replace(base, headers=(*base.headers, *extra)), i.POLICY
    # test_headers and test_repair: violations, edits, repairs
    h = headers_tests
    for headers in (
        h.BASE,
        (*h.BASE, ("Subject", "a"), ("Subject", "b")),
        (("From", "a@example.com"), ("Subject", "s")),
        (*h.BASE, ("X-Originating-IP", "[10.0.0.1]"), ("x-originating-ip", "[10.0.0.2]")),
        (*h.BASE, ("Subject", "caf\u00e9")),
        (*h.BASE, ("Subject", "caf\udce9")),
        (*h.BASE, ("Subject", "x" * 1200)),
        (*h.BASE, ("Subject", "word " * 300)),
    ):
        f = Facts(
            auth_login="a@example.com",
            client_port=1,
            mail_from="a@example.com",
            rcpts=("r@x.test",),
            headers=headers,
            queue_id="QID1",
        )
        yield "headers", f, h.POLICY
        strict = h.POLICY.model_copy(update={"headers": HeadersSection(on_violation="tempfail")})
        yield "headers", f, strict
        yield "headers", replace(f, mime_problem="nested too deep"), h.POLICY
    rp = repair_tests
    for headers in (
        (("From", "Al\u00efce <alice@example.com>"),),
        (("From", "news@example.com"), ("Subject", "r\u00e9sum\u00e9")),
        (("From", "alice@example.com"), ("To", ", ".join(f"u{n}@x.test" for n in range(90)))),
    ):
        f = Facts(
            auth_login="alice@example.com",
            client_port=1,
            mail_from="alice@example.com",
            rcpts=("r@x.test",),
            headers=(*rp.BASE, *headers),
            queue_id="QID1",
        )
        yield "repair", f, rp.POLICY
    # test_feedback: suppressed recipients, Feedback-ID
    fb = feedback_tests
    plain, with_id = fb.load_policy(), fb.load_policy("\n[feedback]\nfeedback_id = true\n")
    server = Suppression("bob@remote.test", "", "2026-11-22T09:00:00+00:00", "added by hand")
    for policy in (plain, with_id):
        for rcpts, sup in (
            (("Bob@remote.test", "carol@remote.test"), (fb.BOB_COM,)),
            (("bob@remote.test",), (fb.BOB_COM,)),
            (("bob@remote.test", "c@gmail.com"), (server,)),
            (("carol@remote.test",), ()),
        ):
            yield "feedback", fb._facts(rcpts, sup), policy
        bulk = fb._facts(("carol@remote.test",), ())
        extra = (("Precedence", "bulk"), ("List-Unsubscribe", "<https://example.com/u>"))
        yield "feedback", replace(bulk, headers=(*bulk.headers, *extra)), policy


def states(facts: Facts, policy: Policy) -> list[RateState]:
    """Every cap of the message's route just under and just over, locked, and warm-up states."""
    caps = route(facts, policy).caps
    n = len(facts.rcpts)
    out = [RateState(), RateState(lock=LOCK)]
    for limit, window, _ in caps.messages:
        out += [
            RateState(counts=((window, limit - 1, 0),)),
            RateState(counts=((window, limit, 0),)),
        ]
    for limit, window, _ in caps.recipients:
        out += [
            RateState(counts=((window, 0, limit - n),)),
            RateState(counts=((window, 0, limit - n + 1),)),
        ]
    warm = [
        ("2026-12-01", (("example.com", "gmail", 4, 0),)),
        ("2026-12-01", (("example.com", "gmail", 5, 0), ("server", "yahoo", 1, 0))),
        ("2026-12-02", (("example.com", "gmail", 0, 3),)),
        ("2026-12-09", (("example.com", "gmail", 999, 0),)),
    ]
    out += [RateState(warmup_today=day, warmup=w) for day, w in warm]
    out.append(RateState(lock=LOCK, warmup_today="2026-12-01", warmup=warm[1][1]))
    return out


CASES = list(cases())


def test_the_cases_are_many_and_varied() -> None:
    assert len(CASES) >= 130
    assert {kind for kind, _, _ in CASES} == {
        "engine",
        "rate",
        "streams",
        "bulk",
        "identity",
        "headers",
        "repair",
        "feedback",
    }


def _same(a: Verdict, b: Verdict) -> None:
    assert a == b
    # == covers these; said again so that a failure shows where they differ
    assert a.action == b.action and a.reasons == b.reasons and a.effects == b.effects


@pytest.mark.parametrize(("kind", "facts", "policy"), CASES, ids=[k for k, _, _ in CASES])
def test_reusing_an_earlier_evaluation_gives_a_fresh_evaluations_verdict(
    kind: str, facts: Facts, policy: Policy
) -> None:
    r = route(facts, policy)
    early = evaluate(facts, policy, NOW, None, r)  # as carry_out: no rate state, then the real
    _same(early, evaluate(facts, policy, NOW))
    previous = early
    for state in states(facts, policy):
        fresh = evaluate(facts, policy, NOW, state, r)
        _same(evaluate(facts, policy, NOW, state, r, earlier=early), fresh)
        _same(evaluate(facts, policy, NOW, state, earlier=early), fresh)  # route worked out
        # from an earlier run with another rate state (the rate check found otherwise)
        _same(evaluate(facts, policy, NOW, state, r, earlier=previous), fresh)
        previous = fresh


def test_an_earlier_evaluation_of_something_else_is_not_reused() -> None:
    f = engine_tests.facts()
    early = evaluate(f, engine_tests.POLICY, NOW)
    other = engine_tests.facts(headers=(("From", "x@elsewhere.test"),))
    _same(
        evaluate(other, engine_tests.POLICY, NOW, earlier=early),
        evaluate(other, engine_tests.POLICY, NOW),
    )
    later = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    _same(
        evaluate(f, engine_tests.POLICY, later, earlier=early),
        evaluate(f, engine_tests.POLICY, later),
    )
    policy = engine_tests.POLICY.model_copy(update={"rate": RateSection(messages=["1/minute"])})
    one = RateState(counts=((60, 1, 0),))
    _same(evaluate(f, policy, NOW, one, earlier=early), evaluate(f, policy, NOW, one))


FUZZ_POLICY = Policy(
    domains={"example.com": DomainPolicy(include_subdomains=True)},
    outbound=["sasl", "local", "network:192.0.2.0/24"],
    rate=RateSection(messages=["2/minute", "5/hour"], recipients=["10/minute"]),
    bulk=BulkSection(recipients=20),
    streams=StreamsSection(bulk=BulkStream(pace="60/minute")),
    warmup=WARM,
    hash="h",
)
RATE_STATES = st.builds(
    RateState,
    lock=st.sampled_from([None, LOCK]),
    counts=st.lists(
        st.tuples(st.sampled_from([60, 3600]), st.integers(0, 6), st.integers(0, 12)),
        max_size=2,
        unique_by=lambda c: c[0],
    ).map(tuple),
    warmup_today=st.sampled_from(["", "2026-12-01", "2026-12-02", "2026-12-09"]),
    warmup=st.lists(
        st.tuples(
            st.just("example.com"),
            st.sampled_from(["gmail", "yahoo", "microsoft"]),
            st.integers(0, 12),
            st.integers(0, 2),
        ),
        max_size=2,
        unique_by=lambda w: w[1],
    ).map(tuple),
)


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(fuzz_tests.message_facts(), RATE_STATES, RATE_STATES)
def test_reuse_on_random_messages_and_rate_states(
    facts: Facts, first: RateState, second: RateState
) -> None:
    earlier = evaluate(facts, FUZZ_POLICY, NOW, first)
    _same(
        evaluate(facts, FUZZ_POLICY, NOW, second, earlier=earlier),
        evaluate(facts, FUZZ_POLICY, NOW, second),
    )


# ---- what a check reads is data, and held to it ------------------------------------------------


def test_each_check_module_declares_what_it_reads_as_data() -> None:
    for c in registry.checks():
        module = importlib.import_module(c.fn.__module__)
        assert c.reads == module.READS, c.name
        assert c.reads <= registry.KNOWN_READS
    # The checks that read the sender's counts, lock or warm-up state: run again in the rate
    # transaction. The rest run once per message.
    assert {c.name for c in registry.checks() if "rate" in c.reads} == {"rate", "warmup"}


def test_a_check_that_reads_the_rate_state_undeclared_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sneaky(ctx: engine.Context) -> list[Reason]:
        return [Reason("sneaky", "x", engine.Action.ACCEPT, "locked")] if ctx.rate.lock else []

    check = registry.Check("sneaky", 15, sneaky, {"x": "y"}, {})
    monkeypatch.setattr(
        registry, "_ORDERED", (*registry.ordered()[:1], check, *registry.ordered()[1:])
    )
    with pytest.raises(engine.UndeclaredRead, match=r"sneaky reads ctx\.rate"):
        evaluate(engine_tests.facts(), engine_tests.POLICY, NOW)
    prior = registry.Check("sneaky", 15, lambda ctx: list(ctx.prior), {"x": "y"}, {})
    monkeypatch.setattr(registry, "_ORDERED", (*registry.ordered()[:1], prior))
    with pytest.raises(engine.UndeclaredRead, match=r"sneaky reads ctx\.prior"):
        evaluate(engine_tests.facts(), engine_tests.POLICY, NOW)


def test_unknown_reads_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown READS"):
        registry.register("reader", order=999, codes={"x": "y"}, reads=["clock"])
