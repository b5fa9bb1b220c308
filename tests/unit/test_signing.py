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


def _reference_sign(
    headers: list[tuple[bytes, bytes]], body_hash: bytes, key: LoadedKey, ts: int
) -> str:
    """The signature as dkimpy's own hash_headers builds the signed data (what sign() did
    before it shared the header data between keys): the new path must give the same bytes."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    from postwarden.signing.signer import ALGORITHMS, HEADER_NAME, signed_header_names

    include = signed_header_names(headers)
    algorithm = ALGORITHMS[key.algorithm]
    domain, selector = key.domain.encode(), key.selector.encode()
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", RELAXED.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", selector),
        (b"t", str(ts).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)

    class Collect:
        parts: list[bytes] = []

        def update(self, data: bytes) -> None:
            self.parts.append(data)

    collect = Collect()
    collect.parts = []
    canonical = RELAXED.canonicalize_headers(headers)
    dkim.hash_headers(
        collect, RELAXED, canonical, include, (HEADER_NAME, b" " + unsigned), dict(fields)
    )
    data = b"".join(collect.parts)
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        raw = private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        raw = private.sign(digest.finalize())
    fields[-1] = (b"b", base64.b64encode(raw))
    return str(
        dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME)).decode()
    )


MALFORMED = SHARED / "corpora" / "malformed-email"


def test_shared_header_data_signs_the_same_bytes_as_dkimpys_hash_headers(tmp_path: Path) -> None:
    """sign_all canonicalises and selects the headers once for every key (issue 21): over every
    message of the malformed-email corpus and the flanker vectors (repeated, oddly cased and
    folded headers), each signature equals the one dkimpy's hash_headers path gives, byte for
    byte (RSA PKCS#1 v1.5 and Ed25519 are deterministic)."""
    from postwarden.signing import sign_all

    rsa_key = load_key("example.com", "r", str(write_key(tmp_path / "r.key")), True)
    ed_key = load_key(
        "example.com", "e", str(write_key(tmp_path / "e.key", algorithm="ed25519")), True
    )
    files = sorted(p for p in MALFORMED.rglob("*") if p.is_file())
    files += sorted(FLANKER.glob("email.*"))
    assert len(files) == 134 + 21, len(files)  # the corpus must be there, all of it
    rnd = random.Random(21)
    compared = 0
    for path in files:
        headers, _ = split_message(path.read_bytes())
        if rnd.random() < 0.5:  # oddly cased names and a repeated header or two
            headers = [(n.swapcase() if rnd.random() < 0.3 else n, v) for n, v in headers]
            headers += [h for h in headers if rnd.random() < 0.1]
        body_hash = b"frozen+body+hash+for+the+test+0000000000000="
        got = sign_all(headers, body_hash, [rsa_key, ed_key], NOW)
        assert [s.value for s in got] == [
            _reference_sign(headers, body_hash, rsa_key, NOW),
            _reference_sign(headers, body_hash, ed_key, NOW),
        ], path
        compared += 1
    assert compared == len(files)
