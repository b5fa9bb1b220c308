"""MimeScanner.feed skips the content lines that cannot matter at C speed (issue 21): the byte
offsets it reports are exactly those of the line-by-line reading, fed whole or in any chunks,
and its per-line work depends on the lines that may matter (headers, lines beginning with "--",
a chunk's last line), not on how many content lines a part has."""

from __future__ import annotations

import random
from typing import Any

import pytest

from postwarden.policy import mime
from postwarden.policy.mime import MimeScanner
from tests.unit.test_mime import corpus_files

Reading = tuple[str, int, list[Any]]


def read(headers: list[tuple[str, str]], body: bytes, cuts: list[int] | None = None) -> Reading:
    scanner = MimeScanner(headers, keep_leaves=True)
    at = 0
    for size in cuts or []:
        scanner.feed(body[at : at + size])
        at += size
    scanner.feed(body[at:])
    scanner.close()
    return scanner.problem, scanner.depth, scanner.leaves


def line_by_line(
    monkeypatch: pytest.MonkeyPatch, headers: list[tuple[str, str]], body: bytes
) -> Reading:
    """The reading without the skip: every line through the per-line path."""
    with monkeypatch.context() as m:
        m.setattr(MimeScanner, "_skip", lambda self, data, at, base: at)
        return read(headers, body)


def random_cuts(rng: random.Random, size: int) -> list[int]:
    cuts: list[int] = []
    while sum(cuts) < size:
        cuts.append(rng.choice([1, 1, 2, 3, 5, 17, 64, 300, 4096, 65536]))
    return cuts


# Pieces of hostile bodies: every kind of line break, split CRLFs, boundary-like lines of two
# open multiparts, dashes inside lines, header-like lines, long runs.
PIECES = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n",
    b"--",
    b"-",
    b"--b",
    b"--b--",
    b"--c",
    b"--c--",
    b"--bc",
    b"x",
    b"abc def",
    b" ",
    b"\t",
    b"From x",
    b"Content-Type: multipart/mixed; boundary=c",
    b"Content-Type: multipart/mixed; boundary=b",
    b"Content-Type: message/rfc822",
    b"Content-Type: text/html",
    b"X-Y: z",
    b"a-b",
    b"QUJD" * 40,
    b"-" * 300,
]
BOUNDARY_LINES = [b"--b\r\n", b"--c\r\n", b"--b\n", b"--c\r", b"--b--\r\n", b"--c--\n"]


def hostile_bodies(rng: random.Random, count: int) -> list[bytes]:
    bodies = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(5, 120)):
            parts.append(rng.choice(PIECES))
            if rng.random() < 0.15:  # a line that opens a part, with headers or not
                parts.append(rng.choice([b"\r\n", b"\n", b"\r"]) + rng.choice(BOUNDARY_LINES))
                parts.append(rng.choice([b"", b"Content-Type: text/html\r\n", b"\r\n"]))
        bodies.append(b"".join(parts))
    return bodies


def test_random_chunkings_of_the_corpus_give_the_offsets_of_one_chunk_and_of_every_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(21)
    headers = [("Content-Type", "message/rfc822")]
    files = corpus_files()
    for path in files:
        for raw in (path.read_bytes(), path.read_bytes().replace(b"\n", b"\r\n")):
            whole = read(headers, raw)
            assert line_by_line(monkeypatch, headers, raw) == whole, path
            for _ in range(3):
                cuts = random_cuts(rng, len(raw))
                assert read(headers, raw, cuts) == whole, (path, cuts)
    assert len(files) == 131


@pytest.mark.parametrize(
    "ctype",
    ['multipart/mixed; boundary="b"', "message/rfc822", "text/plain", ""],
)
def test_random_chunkings_of_hostile_bodies_give_the_same_offsets(
    monkeypatch: pytest.MonkeyPatch, ctype: str
) -> None:
    rng = random.Random(ctype)
    headers = [("Content-Type", ctype)] if ctype else []
    bodies = hostile_bodies(rng, 400)
    leaves = 0
    for body in bodies:
        whole = read(headers, body)
        assert line_by_line(monkeypatch, headers, body) == whole, body
        for _ in range(4):
            cuts = random_cuts(rng, len(body))
            assert read(headers, body, cuts) == whole, (body, cuts)
        leaves += len(whole[2])
    assert leaves >= len(bodies) // 2  # bodies with parts in them were read


class Counting:
    """_NEWLINE with its searches counted: one per line that takes the per-line path."""

    def __init__(self, pattern: Any) -> None:
        self.pattern, self.calls = pattern, 0

    def search(self, data: bytes, pos: int) -> Any:
        self.calls += 1
        return self.pattern.search(data, pos)

    def finditer(self, data: bytes, pos: int) -> Any:
        self.calls += 1
        return self.pattern.finditer(data, pos)


def multipart_body(lines: int, nl: bytes) -> bytes:
    """A text part and a base64 attachment of `lines` lines, the bench message's shape."""
    text = b"Lorem ipsum dolor sit amet - consectetur adipiscing elit" + nl
    return (
        b"--=_b0"
        + nl
        + b"Content-Type: text/plain; charset=us-ascii"
        + nl
        + nl
        + text * 12
        + b"--=_b0"
        + nl
        + b"Content-Type: application/pdf; name=r.pdf"
        + nl
        + b"Content-Transfer-Encoding: base64"
        + nl
        + nl
        + (b"QUJDRGVm" * 9 + b"QUJD" + nl) * lines
        + b"--=_b0--"
        + nl
    )


@pytest.mark.parametrize("nl", [b"\r\n", b"\n", b"\r"])
def test_per_line_work_does_not_grow_with_the_content_lines(
    monkeypatch: pytest.MonkeyPatch, nl: bytes
) -> None:
    headers = [("Content-Type", 'multipart/mixed; boundary="=_b0"')]
    counts = {}
    original = MimeScanner._line
    handled = 0

    def counted(self: MimeScanner, next_start: int, content_end: int) -> None:
        nonlocal handled
        handled += 1
        original(self, next_start, content_end)

    for lines in (1_300, 13_000):  # 100 KB (the bench message), 1 MB
        body = multipart_body(lines, nl)
        counter = Counting(mime._NEWLINE)
        monkeypatch.setattr(mime, "_NEWLINE", counter)
        monkeypatch.setattr(MimeScanner, "_line", counted)
        handled = 0
        scanner = MimeScanner(headers, keep_leaves=True)
        for k in range(0, len(body), 65536):  # as the milter gets it
            scanner.feed(body[k : k + 65536])
        scanner.close()
        monkeypatch.undo()
        assert scanner.problem == ""
        assert [leaf.content_type for leaf in scanner.leaves] == ["text/plain", "application/pdf"]
        chunks = len(range(0, len(body), 65536))
        # 3 boundary lines and 5 header lines (blank ones included), plus the line a chunk
        # ends inside (searched for at its end, then finished in the next chunk): never a
        # content line of the parts
        assert handled <= 8 + chunks, (lines, handled)
        assert counter.calls <= 8 + 2 * chunks, (lines, counter.calls)
        counts[lines] = handled
    assert counts[13_000] - counts[1_300] <= 16  # only the extra chunks' last lines


def test_a_plain_body_is_skipped_whole() -> None:
    body = b"Lorem ipsum -- dolor sit amet\r\n" * 40_000
    calls = []
    scanner = MimeScanner([("Content-Type", "text/plain")], keep_leaves=True)
    original = scanner._line
    scanner._line = lambda n, c: (calls.append(n), original(n, c))  # type: ignore[method-assign]
    for k in range(0, len(body), 65536):
        scanner.feed(body[k : k + 65536])
    scanner.close()
    # no multipart is open: no line can be a boundary, only each chunk's partial last line
    assert len(calls) <= len(range(0, len(body), 65536)) + 1
    assert (scanner.leaves[0].content_start, scanner.leaves[0].end) == (0, len(body))
