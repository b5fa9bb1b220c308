"""Fuzz (hypothesis, derandomised so a run is repeatable): the From parser and the engine take
hostile header values without an exception, in bounded time per value (issue 13)."""

from __future__ import annotations

import base64
import email
import email.policy
import time
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwarden.config.models import DomainPolicy, LocalSection, Policy, UserPolicy
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.address import FromResult, header_from

# The measured worst case is ~50 ms (a 2,048-character value); the margin is twenty-fold, in
# CPU seconds of this process (process_time): a loaded machine stretches the wall clock, not this.
FROM_SECONDS = 1.0
EVALUATE_SECONDS = 2.0

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={"example.com": DomainPolicy(), "example.net": DomainPolicy(include_subdomains=True)},
    users={"alice@example.com": UserPolicy(send_as=["alice@example.com", "*@sales.example.com"])},
    local=LocalSection(send_as={"www-data": ["contact@example.com"]}),
    outbound=["sasl", "local", "daemon:ORIGINATING", "network:192.0.2.0/24"],
    hash="h",
)

SPECIALS = [*'@<>,;:"()\\.[] \t=?', "\r\n ", "\n\t", "\0", "\x1b[2J", "\u202e"]
UNICODE = ["\uff20", "\ufe6b", "\uff1c", "\uff1e", "\u2039", "\u00e9", "\u65e5", "\u0430"]
WORDS = ["alice", "example", "com", "evil", "test", "ceo", "x", "=?", "?=", "?q?", "?b?"]


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    text = draw(st.text(alphabet=st.sampled_from(list("ab@<>,.:; ") + UNICODE), max_size=12))
    charset = draw(st.sampled_from(["utf-8", "iso-2022-jp", "iso-8859-1", "x-bogus"]))
    try:
        raw = text.encode("utf-8" if charset == "x-bogus" else charset)
    except UnicodeEncodeError:
        raw = text.encode("utf-8")
        charset = "utf-8"
    if draw(st.booleans()):
        return f"=?{charset}?b?{base64.b64encode(raw).decode()}?="
    q = "".join(chr(b) if 48 <= b < 123 and chr(b).isalnum() else f"={b:02X}" for b in raw)
    return f"=?{charset}?q?{q}?="


tokens = st.one_of(
    st.sampled_from(SPECIALS),
    st.sampled_from(WORDS),
    st.sampled_from(UNICODE),
    encoded_words(),
    st.text(max_size=4),
)


@st.composite
def from_values(draw: st.DrawFn) -> str:
    parts = draw(st.lists(tokens, max_size=40))
    value = "".join(parts)
    if draw(st.integers(0, 9)) == 0:  # now and then a huge one
        value = value * draw(st.integers(100, 5000)) if value else "a." * 50_000
    if draw(st.booleans()):
        value += draw(st.sampled_from([" <alice@example.com>", "alice@example.com", ">"]))
    return value


@settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(st.lists(from_values(), min_size=0, max_size=3))
def test_the_from_parser_never_raises_and_is_fast(values: list[str]) -> None:
    started = time.process_time()
    result = header_from(values)
    assert time.process_time() - started < FROM_SECONDS, values
    assert isinstance(result, FromResult)
    assert bool(result.address) != bool(result.problem)
    assert len(result.problem) < 300
    if result.address:
        assert result.address.count("@") == 1 and result.domain == result.domain.lower()


HEADER_NAMES = [
    "From",
    "Sender",
    "Resent-From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Content-Type",
    "MIME-Version",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Precedence",
    "X-Postwarden-Notice",
    "from",
    "X-\u00e9",
]

header_values = st.one_of(from_values(), st.text(max_size=60), st.sampled_from(["bulk", ""]))


@st.composite
def message_facts(draw: st.DrawFn) -> Facts:
    headers = tuple(
        draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=12))
    )
    how = draw(st.sampled_from(["sasl", "local", "network", "inbound"]))
    login = draw(st.sampled_from(["alice@example.com", "Alice@EXAMPLE.com", "bob", ""]))
    return Facts(
        auth_login=login if how == "sasl" else "",
        local_submission=how == "local",
        client_port=0 if how == "local" else 40000,
        client_addr="192.0.2.9" if how == "network" else "198.51.100.7",
        mail_from=draw(
            st.one_of(
                st.sampled_from(["alice@example.com", "", "x@evil.test"]), st.text(max_size=30)
            )
        ),
        rcpts=tuple(draw(st.lists(st.sampled_from(["b@remote.test", "c@gmail.com"]), max_size=80))),
        headers=headers,
        size=draw(st.integers(0, 10_000_000)),
        smtputf8=draw(st.booleans()),
    )


@settings(
    max_examples=250, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(message_facts())
def test_evaluate_never_raises_on_random_header_sets(facts: Facts) -> None:
    started = time.process_time()
    verdict = evaluate(facts, POLICY, NOW)
    assert time.process_time() - started < EVALUATE_SECONDS
    assert verdict.action in Action
    if verdict.action in (Action.REJECT, Action.TEMPFAIL):
        assert verdict.reasons


# ---- the MIME scanner against the email package, on random structures -------------------------

MIME_LINES = [
    b"--a",
    b"--a--",
    b"--b",
    b"--b--",
    b"--a  ",
    b"--b\t--",
    b'Content-Type: multipart/mixed; boundary="a"',
    b"Content-Type: multipart/alternative; boundary=b",
    b"Content-Type: multipart/digest; boundary=a",
    b"Content-Type: message/rfc822",
    b"Content-Type: text/html",
    b"Content-Type: text/plain",
    b"Content-Type: message/delivery-status",
    b" boundary=b",
    b"X-Other: x",
    b"From nobody",
    b"",
    b"",
    b"<p>hi</p>",
    b"plain text",
    b"--ab",
    b"-- a",
    b"content-type: MULTIPART/MIXED; BOUNDARY=b",
    b"Content-Type:multipart/related;\tboundary=a",
    b"Content-Type: multipart/mixed;",
    b"\tboundary=a",
    b"Content-Type: message/global",
    b"--a--  ",
    b"--",
    b"Subject: x",
]


@st.composite
def mime_bodies(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.sampled_from(MIME_LINES), max_size=60))
    seps = draw(
        st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=len(lines), max_size=len(lines))
    )
    return b"".join(line + sep for line, sep in zip(lines, seps, strict=True))


@settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(mime_bodies())
def test_the_mime_scanner_reads_random_structures_as_the_email_package_does(raw: bytes) -> None:
    from tests.unit.test_mime import python_leaves, scanned_leaves

    scanner, got = scanned_leaves(raw)
    assert scanner.problem == ""
    expected: list[tuple[str, str | None]] = []
    python_leaves(email.message_from_bytes(raw, policy=email.policy.compat32), expected)
    assert got == expected
