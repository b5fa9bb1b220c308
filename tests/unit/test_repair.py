"""[headers].repair (issue 14): raw UTF-8 encoded as RFC 2047, long lines refolded, what cannot
be repaired named; Sender, Resent-From and Resent-Sender held to From's rules; the client's
trace stripped on request."""

from __future__ import annotations

import email.errors
import email.header
import email.utils
from datetime import UTC, datetime

import pytest

from postwarden.config.models import DomainPolicy, HeadersSection, Policy, UserPolicy
from postwarden.policy import Action, Facts, evaluate
from postwarden.policy.address import header_address, header_from
from postwarden.policy.hygiene import headers_after
from postwarden.policy.model import HeaderEdit
from postwarden.policy.repair import (
    ADDRESS_HEADERS,
    MAX_ENCODE,
    MAX_LINE,
    encode_unstructured,
    encode_words,
    long_line,
    refold,
    repair_headers,
)
from tests.helpers import SHARED

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    domains={"example.com": DomainPolicy(), "example.org": DomainPolicy()},
    users={"alice@example.com": UserPolicy(send_as=["alice@example.com", "news@example.com"])},
    outbound=["sasl"],
)
BASE = (
    ("Date", "Mon, 23 Nov 2026 09:00:00 +0000"),
    ("Message-ID", "<1@example.com>"),
)


def decoded(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def unfold(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", "\t")


def run(*headers: tuple[str, str], policy: Policy = POLICY, mail_from: str = "alice@example.com"):  # type: ignore[no-untyped-def]
    f = Facts(
        auth_login="alice@example.com",
        client_port=1,
        mail_from=mail_from,
        rcpts=("r@x.test",),
        headers=(*BASE, *headers),
        queue_id="QID1",
    )
    return evaluate(f, policy, NOW)


# ---- encoding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "r\u00e9sum\u00e9 \u65e5\u672c",
        "caf\u00e9",
        "Re: r\u00e9sum\u00e9 de Ren\u00e9e, 100% =?ok _under_ score",
        "\u00e9 " * 200,  # many encoded words
        "=?utf-8?q?caf=C3=A9?= na\u00efve",  # beside an encoded word the sender wrote
        "na\u00efve =?utf-8?q?caf=C3=A9?=",
        "tab\tand  two spaces \u00fcber",
        "\U0001f600 emoji",
    ],
)
def test_unstructured_text_encodes_and_reads_the_same(text: str) -> None:
    value = encode_unstructured(text)
    assert value.isascii()
    for word in value.split():
        if word.startswith("=?"):
            assert len(word) <= 75
    assert all(len(line) <= 78 for line in value.split("\n"))
    expected = text.replace("=?utf-8?q?caf=C3=A9?=", "caf\u00e9")
    assert decoded(unfold(value)) == expected


def test_ascii_words_stay_readable() -> None:
    assert encode_unstructured("Order 42: r\u00e9sum\u00e9 attached") == (
        "Order 42: =?utf-8?q?r=C3=A9sum=C3=A9?= attached"
    )


def test_encoded_words_split_between_characters_never_inside_one() -> None:
    words = encode_words("\u65e5" * 40)
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    assert decoded(" ".join(words)) == "\u65e5" * 40


# ---- the whole header list -----------------------------------------------------------------


def test_display_names_are_encoded_never_the_address() -> None:
    r = repair_headers(
        [
            ("From", "Ren\u00e9e Dupr\u00e9 <bob@example.com>"),
            ("To", '"M\u00fcller, Hans" <hans@x.test>, plain@x.test, =?utf-8?q?ok?= <o@x.test>'),
        ],
        smtputf8=False,
        enabled=True,
    )
    assert r.problems == ()
    assert [(c.name, c.index, c.kinds) for c in r.changes] == [
        ("From", 1, ("encoded",)),
        ("To", 1, ("encoded",)),
    ]
    frm, to = (v for _, v in r.headers)
    assert header_from([frm]).address == "bob@example.com"
    assert email.utils.getaddresses([unfold(frm)])[0][1] == "bob@example.com"
    assert decoded(unfold(frm).split(" <")[0]) == "Ren\u00e9e Dupr\u00e9"
    addrs = email.utils.getaddresses([unfold(to)])
    assert [a for _, a in addrs] == ["hans@x.test", "plain@x.test", "o@x.test"]
    assert decoded(addrs[0][0]) == "M\u00fcller, Hans"


@pytest.mark.parametrize(
    ("header", "code", "says"),
    [
        (
            ("Subject", "Caf\udce9"),
            "eight_bit",
            "the Subject header holds bytes that are not UTF-8",
        ),
        (("To", "Ren\u00e9e <ren\u00e9e@x.test>"), "eight_bit", "non-ASCII address"),
        (("To", "ren\u00e9e@x.test"), "eight_bit", "SMTPUTF8"),
        (("Date", "Mon, 23 Nov 2026 \u00e9"), "eight_bit", "structured header"),
        (("Content-Type", 'text/plain; name="\u00e9.txt"'), "eight_bit", "RFC 2231"),
        (("X-Token", "x" * 1200), "too_long", "no whitespace to fold at"),
        (("To", "a@x.test, " + "b" * 1100 + "@x.test"), "too_long", "the To header"),
    ],
)
def test_what_cannot_be_repaired_names_the_header(
    header: tuple[str, str], code: str, says: str
) -> None:
    r = repair_headers([header], smtputf8=False, enabled=True)
    assert r.changes == ()
    assert [(p.code, p.name) for p in r.problems] == [(code, header[0])]
    assert says in r.problems[0].text
    assert r.headers == (header,)


def test_a_long_address_list_is_refolded_one_address_per_line() -> None:
    addrs = [
        f"Recipient Number {i:02d} <recipient.number.{i:02d}@remote-mail.example>"
        for i in range(30)
    ]
    value = ", ".join(addrs)
    assert len(value) > 1800
    r = repair_headers([("To", value)], smtputf8=False, enabled=True)
    (change,) = r.changes
    assert change.kinds == ("refolded",)
    lines = f"To: {change.value}".split("\n")
    assert len(lines) == 30 and all(len(line) <= MAX_LINE for line in lines)
    assert [a for _, a in email.utils.getaddresses([unfold(change.value)])] == [
        f"recipient.number.{i:02d}@remote-mail.example" for i in range(30)
    ]


def test_unstructured_text_is_refolded_at_whitespace_keeping_every_character() -> None:
    value = "word " * 300 + "end"
    folded = refold("Subject", value)
    assert folded is not None
    assert all(len(line) <= 78 for line in f"Subject: {folded}".split("\n"))
    assert folded.replace("\n", "") == value


def test_encoded_and_refolded_together() -> None:
    r = repair_headers([("Subject", "\u00e9t\u00e9 " * 200)], smtputf8=False, enabled=True)
    (change,) = r.changes
    assert change.kinds == ("encoded",)  # encoded words are folded as they are made
    assert all(len(line) <= MAX_LINE for line in change.value.split("\n"))


def test_repair_off_refuses_as_before_and_smtputf8_needs_no_encoding() -> None:
    off = repair_headers(
        [("Subject", "caf\u00e9"), ("X-A", "a " * 600)], smtputf8=False, enabled=False
    )
    assert [p.code for p in off.problems] == ["eight_bit", "too_long"] and off.changes == ()
    utf8 = repair_headers([("Subject", "caf\u00e9")], smtputf8=True, enabled=True)
    assert utf8.changes == () and utf8.problems == ()


def test_headers_to_be_removed_are_neither_repaired_nor_judged() -> None:
    r = repair_headers(
        [("X-Originating-IP", "\u00e9")], smtputf8=False, enabled=True, skip=["x-originating-ip"]
    )
    assert r.changes == () and r.problems == ()


# ---- through the engine ---------------------------------------------------------------------


def test_the_from_parser_judges_the_repaired_from_and_the_plan_replaces_in_place() -> None:
    v = run(
        ("From", "Ren\u00e9e Dupr\u00e9 <alice@example.com>"),
        ("Subject", "r\u00e9sum\u00e9 \u65e5\u672c"),
        ("Subject", "second"),
    )
    assert v.from_address == "alice@example.com"
    keys = [r.key for r in v.reasons]
    assert keys == ["headers.duplicate", "headers.encoded", "headers.encoded"]
    v = run(
        ("From", "Ren\u00e9e Dupr\u00e9 <alice@example.com>"),
        ("X-Originating-IP", "[10.0.0.1]"),
        ("Subject", "r\u00e9sum\u00e9 \u65e5\u672c"),
    )
    assert v.action == Action.ACCEPT
    assert [(r.key, r.detail) for r in v.reasons] == [
        ("headers.encoded", "From"),
        ("headers.encoded", "Subject"),
    ]
    assert "repaired the Subject header" in v.reasons[1].text
    ops = [(e.op, e.name, e.index) for e in v.edits]
    assert ops[:3] == [
        ("replace", "From", 1),
        ("replace", "Subject", 1),
        ("remove", "X-Originating-IP", 1),
    ]
    leaving = headers_after(
        [*BASE, ("From", "x"), ("X-Originating-IP", "1"), ("Subject", "s")], v.edits
    )
    assert [n for n, _ in leaving][:4] == ["Date", "Message-ID", "From", "Subject"]
    assert decoded(unfold(dict(leaving)["Subject"])) == "r\u00e9sum\u00e9 \u65e5\u672c"


def test_a_latin1_subject_is_refused_naming_the_subject() -> None:
    v = run(("From", "alice@example.com"), ("Subject", "Caf\udce9"))
    assert v.action == Action.REJECT
    assert [r.key for r in v.reasons] == ["headers.eight_bit"]
    assert (
        v.reply() is not None
        and "the Subject header holds bytes that are not UTF-8" in v.reply()[2]
    )  # type: ignore[index]


def test_a_latin1_from_is_refused_with_the_repair_text_not_an_address_text() -> None:
    v = run(("From", "Ren\udce9e <alice@example.com>"))
    assert [r.key for r in v.reasons] == ["from_domain.unreadable"]
    assert v.reasons[0].text.startswith("the From header holds bytes that are not UTF-8")


def test_rejected_mail_gets_no_repair_edits() -> None:
    v = run(("From", "alice@example.com"), ("Subject", "caf\u00e9"), ("Subject", "x"))
    assert v.action == Action.REJECT and v.edits == ()


# ---- Sender, Resent-From, Resent-Sender ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "codes"),
    [
        (("Sender", "news@example.com"), []),
        (("Sender", "Alice <alice@example.com>"), []),
        (("Resent-From", "news@example.com"), []),
        (("Resent-Sender", "alice@example.com"), []),
        (("Sender", "CEO <ceo@example.com>"), ["identity.sender_not_allowed"]),
        (("Resent-From", "ceo@example.com"), ["identity.sender_not_allowed"]),
        (("Resent-Sender", "ceo@example.com"), ["identity.sender_not_allowed"]),
        (("Sender", "x@elsewhere.test"), ["identity.sender_not_hosted"]),
        (("Sender", "news@example.com, alice@example.com"), ["identity.sender_unreadable"]),
        (("Resent-From", '"ceo@example.com" <alice@example.com>'), ["identity.sender_unreadable"]),
    ],
)
def test_from_like_headers_are_held_to_froms_rules(
    header: tuple[str, str], codes: list[str]
) -> None:
    v = run(("From", "alice@example.com"), header)
    assert [r.key for r in v.reasons] == codes
    assert v.action == (Action.REJECT if codes else Action.ACCEPT)
    for r in v.reasons:
        assert header[0] in r.text


def test_a_sender_must_align_with_the_envelope_sender() -> None:
    policy = Policy(
        domains={"example.com": DomainPolicy(), "example.org": DomainPolicy()},
        users={"alice@example.com": UserPolicy(send_as=["*@example.com", "*@example.org"])},
        outbound=["sasl"],
    )
    v = run(("From", "alice@example.com"), ("Sender", "alice@example.org"), policy=policy)
    assert [r.key for r in v.reasons] == ["identity.sender_misaligned"]


def test_header_address_names_its_header() -> None:
    assert header_address("Sender", ["a@x.test, b@x.test"]).problem.startswith("the Sender header")
    assert header_address("Sender", ["Bob <bob@x.test>"]).address == "bob@x.test"


# ---- strip_client_received -------------------------------------------------------------------


def test_strip_client_received_removes_the_clients_trace_every_copy() -> None:
    policy = POLICY.model_copy(update={"headers": HeadersSection(strip_client_received=True)})
    trace = (
        ("Received", "from [192.168.1.20] by webmail"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Received", "from laptop ([10.0.0.5])"),
        ("X-Sender-IP", "203.0.113.7"),
        ("X-Originating-IP", "[203.0.113.7]"),
        ("X-Keep", "1"),
    )
    v = run(("From", "alice@example.com"), *trace, policy=policy)
    assert v.action == Action.ACCEPT
    assert [e for e in v.edits if e.op == "remove"] == [
        HeaderEdit("remove", "X-Originating-IP", 1),
        HeaderEdit("remove", "Received", 2),
        HeaderEdit("remove", "Received", 1),
        HeaderEdit("remove", "X-Forwarded-For", 1),
        HeaderEdit("remove", "X-Sender-IP", 1),
    ]
    leaving = headers_after([*BASE, ("From", "alice@example.com"), *trace], v.edits)
    assert [n for n, _ in leaving] == ["Date", "Message-ID", "From", "X-Keep"]
    default = run(("From", "alice@example.com"), *trace)
    assert {e.name for e in default.edits if e.op == "remove"} == {"X-Originating-IP"}


# ---- real, malformed mail: the corpus --------------------------------------------------------

CORPUS = SHARED / "corpora" / "malformed-email"


def milter_headers(raw: bytes) -> list[tuple[str, str]]:
    """The header as pymilter hands it over: valid UTF-8 as characters, other bytes as
    surrogate escapes, continuation lines joined with LF."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    out: list[tuple[str, str]] = []
    for line in head.split(b"\n"):
        text = line.decode("utf-8", "surrogateescape")
        if text[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + text)
        elif ":" in text:
            name, _, value = text.partition(":")
            out.append((name.strip(), value.lstrip(" \t")))
    return out


def test_every_corpus_header_is_repaired_to_ascii_lines_once_and_keeps_its_addresses() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "LICENSE" not in p.name)
    assert len(files) >= 120, f"the corpus is missing or short: {len(files)} files in {CORPUS}"
    changed = 0
    for path in files:
        headers = milter_headers(path.read_bytes())
        r = repair_headers(headers, smtputf8=False, enabled=True)
        assert len(r.headers) == len(headers), path
        for change in r.changes:
            changed += 1
            assert change.value.isascii(), (path, change)
            assert not long_line(change.name, change.value), (path, change.name)
            if change.name.lower() in ("from", "to", "cc", "reply-to", "sender"):
                before = [v for n, v in headers if n == change.name][change.index - 1]
                assert [a for _, a in email.utils.getaddresses([unfold(before)])] == [
                    a for _, a in email.utils.getaddresses([unfold(change.value)])
                ], (path, change.name)
        # Idempotent: what was repaired needs no second repair, and no new problem appears.
        again = repair_headers(r.headers, smtputf8=False, enabled=True)
        assert again.changes == (), (path, again.changes)
        assert again.problems == r.problems, path
    assert changed == 0  # real mail here holds no raw UTF-8 or long lines: nothing to repair


def test_corpus_encoded_words_written_raw_as_php_mail_would_are_repaired_reading_the_same() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "LICENSE" not in p.name)
    assert len(files) >= 120, f"the corpus is missing or short: {len(files)} files in {CORPUS}"
    checked = 0
    for path in files:
        for name, value in milter_headers(path.read_bytes()):
            if "=?" not in value or not value.isascii():
                continue
            try:
                text = decoded(unfold(value))
            except (UnicodeError, LookupError, email.errors.HeaderParseError):
                continue
            if text.isascii() or any(ord(c) < 32 for c in text):
                continue
            r = repair_headers([(name, text)], smtputf8=False, enabled=True)
            if len(text) > MAX_ENCODE:  # flanker's long-header.eml: refused, not encoded
                assert [p.code for p in r.problems] == ["eight_bit"]
                continue
            assert r.problems == (), (path, name, r.problems)
            (change,) = r.changes
            assert change.value.isascii() and not long_line(name, change.value)
            if name.lower() in ADDRESS_HEADERS:
                got = email.utils.getaddresses([unfold(change.value)])
                assert [(decoded(n), a) for n, a in got] == email.utils.getaddresses([text])
            else:
                assert decoded(unfold(change.value)) == text, (path, name)
            checked += 1
    assert checked >= 8


def test_a_display_name_beside_an_encoded_word_keeps_it() -> None:
    r = repair_headers(
        [("To", "=?utf-8?q?Ren=C3=A9e?= Dupr\u00e9 <r@x.test>")], smtputf8=False, enabled=True
    )
    (change,) = r.changes
    ((name, addr),) = email.utils.getaddresses([unfold(change.value)])
    assert (decoded(name), addr) == ("Ren\u00e9e Dupr\u00e9", "r@x.test")


def test_address_headers_beyond_the_usual_are_never_encoded_as_text() -> None:
    r = repair_headers([("Return-Receipt-To", "r\u00e9@x.test")], smtputf8=False, enabled=True)
    assert r.changes == () and [p.code for p in r.problems] == ["eight_bit"]


class Recorder:
    """A stand-in for the libmilter calls, recording them in order (unit test only; the e2e
    tests show a real Postfix doing the same)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.calls.append(("chgheader", field, idx, value))

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.calls.append(("addheader", field, idx))

    def replacebody(self, chunk: bytes) -> None:
        self.calls.append(("replacebody",))

    def quarantine(self, reason: str) -> None:
        self.calls.append(("quarantine",))

    def setreply(self, rcode: str, xcode: str, *msg: str) -> None:
        self.calls.append(("setreply",))


def test_postfix_is_told_each_repair_in_place_before_any_removal() -> None:
    from postwarden.milter.effects import Prepared, tell_postfix

    v = run(
        ("From", "alice@example.com"),
        ("X-Originating-IP", "[10.0.0.1]"),
        ("Comments", "a"),
        ("Comments", "b\u00e9"),
    )
    io = Recorder()
    tell_postfix(v, Prepared(list(v.edits), None, []), io)
    # The stream header (streams.md) comes last, after the signatures: not part of this order.
    assert [c for c in io.calls if c[1] != "X-Postwarden-Stream"] == [
        ("chgheader", "Comments", 2, "=?utf-8?q?b=C3=A9?="),
        ("chgheader", "X-Originating-IP", 1, None),
    ]


def test_encoding_is_bounded() -> None:
    import time

    started = time.process_time()
    r = repair_headers([("Subject", "\u00e9 " * 8000)], smtputf8=False, enabled=True)
    assert r.changes and time.process_time() - started < 1
    huge = repair_headers([("Subject", "\u00e9" * 20000)], smtputf8=False, enabled=True)
    assert huge.changes == () and "more than postwarden encodes" in huge.problems[0].text


def test_unfolding_removes_only_the_line_break() -> None:
    r = repair_headers(
        [("To", '"Ren\u00e9e\n Dupr\u00e9" <r@x.test>')], smtputf8=False, enabled=True
    )
    ((name, _),) = email.utils.getaddresses([unfold(r.changes[0].value)])
    assert decoded(name) == "Ren\u00e9e Dupr\u00e9"


def test_a_repaired_from_the_parser_still_refuses_says_it_was_encoded() -> None:
    v = run(("From", '"Dupr\u00e9, Ren\u00e9e" <alice@example.com>'))
    assert [r.key for r in v.reasons] == ["from_domain.unreadable"]
    assert "once its raw UTF-8 display name was encoded (RFC 2047)" in v.reasons[0].text
    assert "decodes to ','" in v.reasons[0].text
