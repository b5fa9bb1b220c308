"""Hostile text shown safely: printable() for terminals, logfield() for key=value log lines,
and the strict queue id check in front of postcat (issue 13, points 10 and 11)."""

from __future__ import annotations

import pytest

from postwarden.quarantine import valid_queue_id
from postwarden.textsafe import logfield, printable, printable_lines


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain text", "plain text"),
        (
            "Ren\u00e9e \u65e5\u672c \U0001f468\u200d\U0001f469",
            "Ren\u00e9e \u65e5\u672c \U0001f468\u200d\U0001f469",
        ),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("a\rb\nc\td\x00e\x08", "a\\x0db\\x0ac\\x09d\\x00e\\x08"),
        ("del\x7f c1\x9b[31m \x85", "del\\x7f c1\\x9b[31m \\x85"),
        ("abc\u202egnp.exe", "abc\\u202egnp.exe"),
        ("".join(chr(c) for c in range(0x202A, 0x202F)), "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("".join(chr(c) for c in range(0x2066, 0x206A)), "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c\u2028\u2029\ufeff", "\\u200e\\u200f\\u061c\\u2028\\u2029\\ufeff"),
        ("Caf\udce9", "Caf\\xe9"),  # a raw Latin-1 byte, as pymilter hands it over
        ("back\\slash", "back\\slash"),
    ],
)
def test_printable(value: str, shown: str) -> None:
    assert printable(value) == shown
    assert printable(shown) == shown  # escaped text is safe as it is
    shown.encode("utf-8")  # never a lone surrogate that a terminal write would choke on


def test_printable_lines_keeps_newlines_and_tabs_only() -> None:
    assert printable_lines("Subject: a\x1b[31m\r\n\tb\n") == "Subject: a\\x1b[31m\\x0d\n\tb\n"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("alice@example.com", "alice@example.com"),
        ("sasl:alice@example.com", "sasl:alice@example.com"),
        ("rate.locked_now,identity.not_allowed", "rate.locked_now,identity.not_allowed"),
        ("", '""'),
        ("a b", '"a b"'),
        ("x action=accept", '"x action=accept"'),
        ('"a b"@example.com action=accept', '"\\"a b\\"@example.com action=accept"'),
        ("a\\", '"a\\\\"'),
        ("a\nqueue=FAKE", '"a\\x0aqueue=FAKE"'),
        ("a\x1b[2J", '"a\\x1b[2J"'),
        ("Ren\u00e9e", '"Ren\u00e9e"'),
    ],
)
def test_logfield(value: str, field: str) -> None:
    assert logfield(value) == field


def test_a_logfield_is_always_one_field() -> None:
    for value in ["a b=c", 'x" y="z', '\\" k=v', "=", " ", "a\tb=c", "k=v\u2028k2=v2"]:
        line = f"from={logfield(value)} action=reject"
        # one space-separated token per field outside quotes
        out, quoted, escaped = [], False, False
        current = ""
        for ch in line:
            if escaped:
                current += ch
                escaped = False
            elif ch == "\\" and quoted:
                current += ch
                escaped = True
            elif ch == '"':
                quoted = not quoted
                current += ch
            elif ch == " " and not quoted:
                out.append(current)
                current = ""
            else:
                current += ch
        out.append(current)
        assert len(out) == 2 and out[1] == "action=reject", (value, line)
        assert "\n" not in line and "\t" not in line


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("4B3C2D1E0F", True),
        ("9CC0D1638F8", True),
        ("3Pm1Nr1BYBz4vMd", True),
        ("4dR8Xb1K9zGfL", True),
        ("-cDIR", False),
        ("-c/tmp", False),
        ("--", False),
        ("", False),
        ("4b3c2d1e0f", False),
        ("4B3C2D1E0F ", False),
        ("4B3C2D1E0F\n", False),
        ("../../etc/passwd", False),
        ("ABCDEFGH", False),
        ("3Pm1Nr1BYBa4vMd", False),  # no z, and a vowel
        ("A" * 21, False),
    ],
)
def test_queue_ids(text: str, ok: bool) -> None:
    assert valid_queue_id(text) is ok
