"""The MIME scanner: it reads the structure the email package reads (the whole malformed
corpus), the same fed in any chunks, bounded in depth without recursion (issue 13, point 8)."""

from __future__ import annotations

import email
import email.message
import email.policy
import random
import re
import time
from pathlib import Path

import pytest

from postwarden.policy.html import MimeTooDeep, wrap_bare_html
from postwarden.policy.mime import (
    MAX_BOUNDARY,
    MAX_CONTENT_TYPE,
    MAX_MIME_DEPTH,
    MimeScanner,
    mime_problem,
)
from tests.helpers import SHARED

CORPUS = SHARED / "corpora" / "malformed-email"
# A "From " line last in a part's headers is its content's first line; the email package also
# drops the blank line after it, which byte offsets cannot: compare without that line.
_FROM_FIRST = re.compile(r"^(From [^\r\n]*(?:\r\n|\n|\r(?!\n)))(?:\r\n|\n|\r(?!\n))")


def corpus_files() -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "LICENSE" not in p.name)
    assert len(files) >= 120, f"the malformed-email corpus is missing from {CORPUS}"
    return files


def python_leaves(msg: email.message.Message, out: list[tuple[str, str | None]]) -> None:
    ctype = msg.get_content_type()
    if ctype == "message/delivery-status":  # header blocks, read as one leaf here
        out.append((ctype, None))
    elif isinstance(msg._payload, list):  # type: ignore[attr-defined]
        for part in msg._payload:  # type: ignore[attr-defined]
            python_leaves(part, out)
    elif not ctype.startswith("multipart/"):
        out.append((ctype, msg._payload.rstrip("\r\n")))  # type: ignore[attr-defined]


def scanned_leaves(raw: bytes, chunks: list[int] | None = None) -> tuple[MimeScanner, list]:
    scanner = MimeScanner([("Content-Type", "message/rfc822")], keep_leaves=True)
    if chunks is None:
        scanner.feed(raw)
    else:
        at = 0
        for size in chunks:
            scanner.feed(raw[at : at + size])
            at += size
        scanner.feed(raw[at:])
    scanner.close()
    leaves = [
        (
            leaf.content_type,
            None
            if leaf.content_type == "message/delivery-status"
            else (_FROM_FIRST.sub(r"\1", content) if leaf.from_first else content).rstrip("\r\n"),
        )
        for leaf, content in (
            (leaf, raw[leaf.content_start : leaf.end].decode("ascii", "surrogateescape"))
            for leaf in scanner.leaves
        )
        if not leaf.content_type.startswith("multipart/")
    ]
    return scanner, leaves


def test_the_scanner_reads_every_corpus_message_as_the_email_package_does() -> None:
    files = corpus_files()
    for path in files:
        raw = path.read_bytes()
        expected: list[tuple[str, str | None]] = []
        python_leaves(email.message_from_bytes(raw, policy=email.policy.compat32), expected)
        scanner, got = scanned_leaves(raw)
        assert scanner.problem == "", path
        assert got == expected, path
    assert len(files) == 131


def test_any_chunking_gives_the_same_reading() -> None:
    rng = random.Random(13)
    for path in corpus_files():
        raw = path.read_bytes().replace(b"\n", b"\r\n") if rng.random() < 0.5 else path.read_bytes()
        whole = scanned_leaves(raw)
        cuts = [rng.choice([1, 2, 3, 7, 64, 1000]) for _ in range(len(raw) // 50 + 1)]
        chunked = scanned_leaves(raw, cuts)
        assert (whole[0].problem, whole[1], whole[0].depth) == (
            chunked[0].problem,
            chunked[1],
            chunked[0].depth,
        ), path


def nested(
    depth: int, kind: str = "multipart", nl: bytes = b"\r\n"
) -> tuple[list[tuple[str, str]], bytes]:
    """`depth` containers inside one another, a text/html part innermost."""
    if kind == "multipart":
        parts = [
            b"--b%d" % (i - 1) + nl + b'Content-Type: multipart/mixed; boundary="b%d"' % i + nl + nl
            for i in range(1, depth)
        ]
        parts.append(
            b"--b%d" % (depth - 1) + nl + b"Content-Type: text/html" + nl + nl + b"<p>x</p>" + nl
        )
        parts += [b"--b%d--" % i + nl for i in reversed(range(depth))]
        return [("Content-Type", 'multipart/mixed; boundary="b0"')], b"".join(parts)
    body = b"".join(b"Content-Type: message/rfc822" + nl + nl for _ in range(depth - 1))
    return [
        ("Content-Type", "message/rfc822")
    ], body + b"Content-Type: text/html" + nl + nl + b"<p>x</p>" + nl


@pytest.mark.parametrize("kind", ["multipart", "message"])
def test_depth_up_to_the_bound_is_fine_and_one_more_is_refused(kind: str) -> None:
    headers, body = nested(MAX_MIME_DEPTH, kind)
    scanner = MimeScanner(headers)
    scanner.feed(body)
    scanner.close()
    assert (scanner.problem, scanner.depth) == ("", MAX_MIME_DEPTH)
    assert wrap_bare_html(headers, body) is not None
    # the email package agrees on the depth
    msg = email.message_from_bytes(
        b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n" + body,
        policy=email.policy.compat32,
    )
    depth, part = 0, msg
    while isinstance(part._payload, list):  # type: ignore[attr-defined]
        depth += 1
        part = part._payload[-1]  # type: ignore[attr-defined]
    assert depth == MAX_MIME_DEPTH
    headers, body = nested(MAX_MIME_DEPTH + 1, kind)
    assert mime_problem(headers, body) == (
        f"MIME parts nested more than {MAX_MIME_DEPTH} deep: "
        "send the content with a plain MIME structure"
    )
    with pytest.raises(MimeTooDeep):
        wrap_bare_html(headers, body)


@pytest.mark.parametrize("depth", [1200, 20_000])
def test_very_deep_mime_is_refused_fast_without_recursion(depth: int) -> None:
    for kind in ("multipart", "message"):
        headers, body = nested(depth, kind)
        started = time.process_time()
        assert "nested more than" in mime_problem(headers, body)
        with pytest.raises(MimeTooDeep):  # never RecursionError
            wrap_bare_html(headers, body)
        assert time.process_time() - started < 1.0


def test_digest_parts_default_to_message_rfc822_and_count() -> None:
    # Inside multipart/digest a part without Content-Type is a message/rfc822.
    body = b""
    for i in range(MAX_MIME_DEPTH):
        body += b'--d%d\r\n\r\nContent-Type: multipart/digest; boundary="d%d"\r\n\r\n' % (i, i + 1)
    headers = [("Content-Type", 'multipart/digest; boundary="d0"')]
    assert "nested more than" in mime_problem(headers, body)


def test_oversized_content_type_and_boundary_are_refused() -> None:
    long_boundary = "b" * (MAX_BOUNDARY + 1)
    assert "boundary over" in mime_problem(
        [("Content-Type", f'multipart/mixed; boundary="{long_boundary}"')], b""
    )
    ok = "b" * MAX_BOUNDARY
    assert mime_problem([("Content-Type", f'multipart/mixed; boundary="{ok}"')], b"") == ""
    body = (
        b'--b\r\nContent-Type: text/plain; x="'
        + b"y" * MAX_CONTENT_TYPE
        + b'"\r\n\r\nx\r\n--b--\r\n'
    )
    assert "Content-Type header over" in mime_problem(
        [("Content-Type", 'multipart/mixed; boundary="b"')], body
    )


def test_huge_bodies_are_read_in_linear_time() -> None:
    headers = [("Content-Type", 'multipart/mixed; boundary="b"')]
    # CPU time (the machine may be busy), per shape, ~2-9 MB each: linear is well under a
    # second each; the quadratic readers this replaces took minutes on such input.
    shapes = {
        "content lines": b"x" * 20 + b"\r\n",
        "dash lines": b"--c\r\n",
        "near-boundary lines": b"--bc\r\n",
        "parts": b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n",
    }
    for name, line in shapes.items():
        count = 100_000 if name == "parts" else 400_000  # a part is ~10 us of CPU: 3.6 MB
        started = time.process_time()
        assert mime_problem(headers, line * count) == "", name
        assert time.process_time() - started < 3.0, name
    one_line = b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"A" * 5_000_000 + b"\r\n--b--\r\n"
    started = time.process_time()
    assert mime_problem(headers, one_line) == ""
    assert time.process_time() - started < 1.0


def test_a_content_type_of_many_short_continuation_lines_is_linear() -> None:
    body = b"--b\r\nContent-Type: text/plain;" + b"\r\n a" * 4000 + b"\r\n\r\nx\r\n--b--\r\n"
    started = time.process_time()
    mime_problem([("Content-Type", 'multipart/mixed; boundary="b"')], body)
    assert time.process_time() - started < 0.5
