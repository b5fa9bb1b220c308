"""Signing: canonicalisation against other projects' vectors, signatures checked by dkimpy
and by OpenDKIM, the RFC 8463 keys, the h= rules, and tampering."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from postwarden.config.keys import LoadedKey, load_key
from postwarden.signing import RelaxedBodyHasher, canonicalize_body, sign
from tests.dkim_verify import dkimpy_results, opendkim_results, records_for, signature_tags
from tests.helpers import SHARED, write_key

FLANKER = SHARED / "corpora" / "dkim" / "flanker-canonicalization"
RFC8463 = SHARED / "corpora" / "dkim" / "dkimpy" / "data"
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
NOW = 1795400000


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = (raw[:-2], b"") if raw.endswith(b"\r\n") else (raw, b"")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n") if head else []:
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body


@pytest.mark.parametrize("case", sorted(p.suffix[1:] for p in FLANKER.glob("email.*")))
def test_flanker_relaxed_canonicalisation(case: str) -> None:
    headers, body = split_message((FLANKER / f"email.{case}").read_bytes())
    got = b"".join(n + b":" + v for n, v in RELAXED.canonicalize_headers(headers))
    got += b"\r\n" + canonicalize_body(body)
    expected = (
        (FLANKER / f"relaxed.expected.{case}")
        .read_bytes()
        .replace(b"\r\n", b"\n")
        .replace(b"\n", b"\r\n")
    )
    assert got == expected, (FLANKER / f"purpose.{case}").read_text()


def test_streaming_body_canonicalisation_equals_dkimpy() -> None:
    rng = random.Random(8463)
    pieces = [b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"x y", b"\r\n\r\n", b"\xc3\xa9", b"  \r\n"]
    for _ in range(5000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        hasher = RelaxedBodyHasher(keep=True)
        pos = 0
        while pos < len(body):
            step = rng.randint(1, 7)
            hasher.update(body[pos : pos + step])
            pos += step
        assert hasher.canonical() == RELAXED.canonicalize_body(body), body


def _keys(tmp_path: Path) -> list[LoadedKey]:
    write_key(tmp_path / "rsa.key")
    write_key(tmp_path / "ed.key", algorithm="ed25519")
    return [
        load_key("example.com", "rsa1", str(tmp_path / "rsa.key"), True),
        load_key("example.com", "ed1", str(tmp_path / "ed.key"), True),
    ]


def signed(raw: bytes, keys: list[LoadedKey]) -> bytes:
    headers, body = split_message(raw)
    hasher = RelaxedBodyHasher()
    hasher.update(body)
    digest = hasher.digest_b64()
    sigs = [sign(headers, digest, k, NOW) for k in keys]
    top = b"".join(b"DKIM-Signature: " + s.value.encode() + b"\r\n" for s in sigs)
    return top + b"".join(n + b":" + v + b"\r\n" for n, v in headers) + b"\r\n" + body


BULK = (
    b"From: News <news@example.com>\r\nTo: you@remote.test\r\nSubject: Offers\r\n"
    b"List-Id: <offers.example.com>\r\n"
    b"List-Unsubscribe: <https://example.com/u/123>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nBuy now.\r\n"
)


def test_signatures_verify_with_dkimpy_and_opendkim(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    message = signed(BULK, keys)
    records = records_for(keys)
    assert dkimpy_results(message, records) == [True, True]
    assert opendkim_results(message, records) == ["pass", "pass"]


def test_from_is_oversigned_list_headers_are_signed_and_there_is_no_l(tmp_path: Path) -> None:
    for tags in signature_tags(signed(BULK, _keys(tmp_path))):
        h = [x.strip() for x in tags["h"].split(":")]
        assert h.count("from") == 2
        assert {"list-unsubscribe", "list-unsubscribe-post", "list-id"} <= set(h)
        assert "l" not in tags
        assert tags["c"] == "relaxed/relaxed"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            b"List-Unsubscribe: <https://example.com/u/123>",
            b"List-Unsubscribe: <https://evil.test/u/123>",
        ),
        (
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            b"List-Unsubscribe-Post: List-Unsubscribe=Two-Clicks",
        ),
    ],
    ids=["List-Unsubscribe", "List-Unsubscribe-Post"],
)
def test_tampering_with_list_unsubscribe_breaks_verification(
    tmp_path: Path, old: bytes, new: bytes
) -> None:
    keys = _keys(tmp_path)
    message = signed(BULK, keys).replace(old, new)
    records = records_for(keys)
    assert dkimpy_results(message, records) == [False, False]
    assert "pass" not in opendkim_results(message, records)


def test_an_added_from_header_breaks_verification(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    message = signed(BULK, keys).replace(b"To: you", b"From: ceo@example.com\r\nTo: you")
    assert dkimpy_results(message, records_for(keys)) == [False, False]


def test_rfc8463_keys_sign_a_message_that_verifies_against_their_records(tmp_path: Path) -> None:
    """The RFC 8463 key set: Ed25519 `brisbane` and RSA `test` at football.example.com."""
    for name in ("ed25519test.key", "test.private"):
        shutil.copy(RFC8463 / name, tmp_path / name)
        (tmp_path / name).chmod(0o600)
    ed = load_key("football.example.com", "brisbane", str(tmp_path / "ed25519test.key"), True)
    rsa = load_key("football.example.com", "test", str(tmp_path / "test.private"), True)
    assert (ed.algorithm, rsa.algorithm) == ("ed25519", "rsa")
    published = {
        "brisbane._domainkey.football.example.com": "v=DKIM1; "
        + (RFC8463 / "ed25519test.dns").read_text().strip(),
        "test._domainkey.football.example.com": (RFC8463 / "test.txt").read_text().strip(),
    }
    # The records published in the corpus are the public halves of these private keys.
    assert published == records_for([ed, rsa]) | {
        "test._domainkey.football.example.com": published["test._domainkey.football.example.com"]
    }
    assert rsa.public_key_b64() in published["test._domainkey.football.example.com"]
    raw = (RFC8463 / "rfc6376.msg").read_bytes()
    message = signed(raw, [ed, rsa])
    assert dkimpy_results(message, published) == [True, True]
    assert opendkim_results(message, published) == ["pass", "pass"]


def test_varied_bodies_verify(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    records = records_for(keys)
    bodies = [
        b"",
        b"\r\n\r\n\r\n",
        b"trailing blank lines\r\n\r\n\r\n\r\n",
        b"no final newline",
        "8-bit: \u00e9t\u00e9 \u00fcber \u65e5\u672c\r\n".encode(),
        b"x" * 5000 + b"\r\n",
        b"tabs\tand   spaces \t \r\n\t\r\nend\r\n",
        b".leading dot\r\n..two dots\r\n",
    ]
    for body in bodies:
        raw = b"From: a@example.com\r\nSubject: s\r\n\r\n" + body
        message = signed(raw, keys)
        assert dkimpy_results(message, records) == [True, True], body[:40]
        assert opendkim_results(message, records) == ["pass", "pass"], body[:40]
