"""Wrapping bare HTML: plain, inside multiparts, base64 and quoted-printable; nothing else moves."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri

import pytest

from postwarden.policy.html import wrap_bare_html
from tests.helpers import SHARED

HTML = b"<p>Hello <b>world</b> =\xc3\xa9</p>\r\n"


def parts_of(headers: list[tuple[str, str]], body: bytes) -> list[bytes]:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode()
    msg = email.message_from_bytes(head + b"\r\n" + body, policy=email.policy.compat32)
    return [p.get_payload(decode=True) for p in msg.walk() if not p.is_multipart()]  # type: ignore[misc]


def test_a_plain_html_message_is_wrapped() -> None:
    headers = [("Content-Type", "text/html; charset=utf-8")]
    assert wrap_bare_html(headers, HTML) == b"<html><body>\r\n" + HTML + b"</body></html>\r\n"


def test_html_with_a_body_element_gets_only_html_and_complete_html_is_left_alone() -> None:
    headers = [("Content-Type", "text/html")]
    assert (
        wrap_bare_html(headers, b"<body>x</body>\r\n") == b"<html>\r\n<body>x</body>\r\n</html>\r\n"
    )
    assert (
        wrap_bare_html(headers, b"<!DOCTYPE html>\r\n<HTML lang=en><body>x</body></HTML>\r\n")
        is None
    )
    assert wrap_bare_html([("Content-Type", "text/plain")], b"<p>not html</p>\r\n") is None


def multipart(html_part: bytes, cte: str) -> tuple[list[tuple[str, str]], bytes]:
    body = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nplain text, untouched \r\n"
        b"--B\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + html_part
        + b"--B\r\nContent-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n"
        b"<p>an attachment stays as it is</p>\r\n--B--\r\n"
    )
    return [("MIME-Version", "1.0"), ("Content-Type", 'multipart/alternative; boundary="B"')], body


def test_multipart_alternative_base64_and_quoted_printable_parts_are_wrapped() -> None:
    for cte, encoded in (
        ("8bit", HTML),
        ("base64", base64.encodebytes(HTML).replace(b"\n", b"\r\n")),
        (
            "quoted-printable",
            quopri.encodestring(HTML.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n"),
        ),
    ):
        headers, body = multipart(encoded, cte)
        new = wrap_bare_html(headers, body)
        assert new is not None, cte
        plain, html, attachment = parts_of(headers, new)
        assert plain == parts_of(headers, body)[0] == b"plain text, untouched "
        assert html.replace(b"\r\n", b"\n").startswith(b"<html><body>\n<p>Hello"), (cte, html)
        assert html.replace(b"\r\n", b"\n").rstrip().endswith(b"</body></html>"), cte
        assert attachment == b"<p>an attachment stays as it is</p>"
        # every byte outside the wrapped part is the same
        start = body.index(encoded)
        assert new[:start] == body[:start]
        assert new.endswith(body[start + len(encoded) :])


def test_nested_multiparts() -> None:
    inner = b"--I\r\nContent-Type: text/html\r\n\r\n<p>deep</p>\r\n--I--\r\n"
    body = (
        b'--O\r\nContent-Type: multipart/alternative; boundary="I"\r\n\r\n' + inner + b"--O--\r\n"
    )
    new = wrap_bare_html([("Content-Type", 'multipart/mixed; boundary="O"')], body)
    assert (
        new is not None and b"\r\n\r\n<html><body>\r\n<p>deep</p>\r\n</body></html>\r\n--I--" in new
    )


def test_the_malformed_corpus_never_raises() -> None:
    for path in (SHARED / "corpora" / "malformed-email").rglob("*"):
        if not path.is_file() or "LICENSE" in path.name:
            continue
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        msg = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)
        result = wrap_bare_html([(k, str(v)) for k, v in msg.items()], body)
        assert result is None or isinstance(result, bytes)


def test_only_multipart_or_html_messages_may_hold_html() -> None:
    from postwarden.policy.html import may_hold_html

    assert may_hold_html([("Content-Type", "text/html; charset=utf-8")])
    assert may_hold_html([("content-type", ' Multipart/Alternative; boundary="b"')])
    assert not may_hold_html([("Content-Type", "text/plain")])
    assert not may_hold_html([("Subject", "no content type: text/plain")])


SAME = b"<p>Hello</p>"
MIXED = [("Content-Type", 'multipart/mixed; boundary="B"')]


def part(ctype: bytes, content: bytes, extra: bytes = b"") -> bytes:
    return b"--B\r\nContent-Type: " + ctype + b"\r\n" + extra + b"\r\n" + content + b"\r\n"


# (body, which parts must be wrapped, in order of the parts): a part holding the same bytes
# as a bare HTML part is never the one edited (issue 14).
WRONG_PART_CASES = {
    "plain before html": (
        part(b"text/plain", SAME) + part(b"text/html", SAME) + b"--B--\r\n",
        [False, True],
    ),
    "preamble holds it": (b"" + SAME + b"\r\n" + part(b"text/html", SAME) + b"--B--\r\n", [True]),
    "attachment first": (
        part(b"text/html", SAME, b"Content-Disposition: attachment\r\n")
        + part(b"text/html", SAME)
        + b"--B--\r\n",
        [False, True],
    ),
    "two bare html parts": (
        part(b"text/html", SAME) + part(b"text/html", SAME) + b"--B--\r\n",
        [True, True],
    ),
    "html then plain": (
        part(b"text/html", SAME) + part(b"text/plain", SAME) + b"--B--\r\n",
        [True, False],
    ),
    "epilogue holds it": (part(b"text/html", SAME) + b"--B--\r\n" + SAME + b"\r\n", [True]),
    "forwarded plain": (
        part(b"message/rfc822", b"Content-Type: text/plain\r\n\r\n" + SAME)
        + part(b"text/html", SAME)
        + b"--B--\r\n",
        [False, True],
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_PART_CASES))
def test_the_wrap_edits_the_html_part_at_its_own_place(case: str) -> None:
    body, wrapped = WRONG_PART_CASES[case]
    new = wrap_bare_html(MIXED, body)
    assert new is not None
    msg = email.message_from_bytes(
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + new, policy=email.policy.compat32
    )
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    assert [b"<html><body>" in p.get_payload(decode=True) for p in leaves] == wrapped, case  # type: ignore[operator]
    # what is outside the wrapped parts is byte for byte the same, preamble and epilogue too
    assert new.replace(b"<html><body>\r\n", b"").replace(b"\r\n</body></html>", b"") == body
