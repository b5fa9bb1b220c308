"""RelaxedBodyHasher.update looks for blanks only where a chunk has them (issue 21): the
canonical body is still dkimpy's, byte for byte, for bodies whose blanks sit anywhere in a chunk
(at its edges, split across chunks, in a small part of a big chunk), and a chunk without a
space or tab (base64) never runs a regex."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from postwarden.signing import body as body_module
from postwarden.signing.body import RelaxedBodyHasher

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

PIECES = [
    b"a",
    b" ",
    b"  ",
    b"\t",
    b" \t ",
    b"\r\n",
    b"\r",
    b"\n",
    b"x y",
    b"\r\n\r\n",
    b" \r\n",
    b"\t\r\n",
    b"QUJDRGVmZ2hp" * 30,  # a long run without blanks
    b"QUJD" * 19 + b"\r\n",
]


def fed(body: bytes, cuts: list[int]) -> RelaxedBodyHasher:
    hasher = RelaxedBodyHasher(keep=True)
    at = 0
    for size in cuts:
        hasher.update(body[at : at + size])
        at += size
    hasher.update(body[at:])
    return hasher


def test_blanks_anywhere_in_big_and_small_chunks_canonicalise_as_dkimpy() -> None:
    rng = random.Random(21)
    for _ in range(3000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60)))
        expected = RELAXED.canonicalize_body(body)
        for cuts in ([], [rng.randint(1, 400) for _ in range(len(body) // 50 + 1)]):
            hasher = fed(body, cuts)
            assert hasher.canonical() == expected, (body, cuts)
            digest = base64.b64encode(hashlib.sha256(expected).digest())
            assert hasher.digest_b64() == digest


class Counting:
    def __init__(self, pattern: Any) -> None:
        self.pattern, self.calls = pattern, 0

    def sub(self, repl: bytes, data: bytes) -> bytes:
        self.calls += 1
        return self.pattern.sub(repl, data)


def test_a_chunk_without_blanks_runs_no_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    wsp, trailing = Counting(body_module._WSP), Counting(body_module._TRAILING_WSP)
    monkeypatch.setattr(body_module, "_WSP", wsp)
    monkeypatch.setattr(body_module, "_TRAILING_WSP", trailing)
    rng = random.Random(7)
    attachment = base64.encodebytes(rng.randbytes(75_000)).replace(b"\n", b"\r\n")
    text = b"The quick brown fox jumps over the lazy dog.\r\n" * 12
    body = text + attachment
    hasher = RelaxedBodyHasher(keep=True)
    for k in range(0, len(body), 65536):
        hasher.update(body[k : k + 65536])
    assert hasher.canonical() == RELAXED.canonicalize_body(body)
    assert (wsp.calls, trailing.calls) == (0, 0)  # single spaces, no trailing blank: nothing
    # a double space or a trailing blank does run them, on the chunk that has it
    hasher = RelaxedBodyHasher(keep=True)
    hasher.update(b"a  b\r\nc \r\n" + attachment)
    assert hasher.canonical() == RELAXED.canonicalize_body(b"a  b\r\nc \r\n" + attachment)
    assert (wsp.calls, trailing.calls) == (1, 1)
