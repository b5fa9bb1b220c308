"""One DKIM-Signature for one key, over headers as they will leave and a body hash."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from dkim.canonicalization import CanonicalizationPolicy

from postwarden.config.keys import LoadedKey

# The headers signed when present (dkimpy's list plus List-Unsubscribe-Post, RFC 8058), each
# copy in message order; the OVERSIGN ones once more than they occur.
SIGN_HEADERS = frozenset(
    h.encode()
    for h in [
        "from",
        "sender",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "to",
        "cc",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-id",
        "content-description",
        "resent-date",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-message-id",
        "in-reply-to",
        "references",
        "list-id",
        "list-help",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-subscribe",
        "list-post",
        "list-owner",
        "list-archive",
        "feedback-id",  # feedback.md: Gmail's feedback loop reads it only when signed
    ]
)
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
HEADER_NAME = b"DKIM-Signature"
ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


@dataclass(frozen=True)
class Signature:
    domain: str
    selector: str
    algorithm: str  # the a= value
    value: str  # the header value, folded with CRLF + TAB

    def record(self) -> dict[str, str]:
        return {"d": self.domain, "s": self.selector, "a": self.algorithm}


# Oversigned (decisions.md, check 5): every header a receiver shows or acts on is named once
# more than it occurs, present or not, so none can be added or prepended without breaking the
# signature (a verifier matches an h= entry with no copy left against an empty header).
OVERSIGN = tuple(
    h.encode()
    for h in [
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "list-id",
        "list-help",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-subscribe",
        "list-post",
        "list-owner",
        "list-archive",
    ]
)


def _signed(name: bytes) -> bool:
    # Every List-* header (RFC 2369, 2919, 8058 and any other) is signed when present.
    return name in SIGN_HEADERS or name.startswith(b"list-")


def signed_header_names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    names = [name.lower() for name, _ in headers if _signed(name.lower())]
    return [*names, *OVERSIGN]


@dataclass(frozen=True)
class SignedHeaders:
    """What every signature of one message shares: the h= names and the canonical bytes of the
    headers they select (all but the DKIM-Signature header itself), computed once."""

    include: list[bytes]
    data: bytes


def signed_headers(headers: list[tuple[bytes, bytes]]) -> SignedHeaders:
    """The header data hashed for relaxed/relaxed, as dkim.hash_headers selects it (each h=
    name takes the last unused copy, bottom up; a name with no copy left selects nothing),
    with each name lower-cased once instead of once per h= entry."""
    include = signed_header_names(headers)
    canonical = RELAXED.canonicalize_headers(headers)
    names = [n.lower() for n, _ in canonical]
    parts: list[bytes] = []
    last: dict[bytes, int] = {}
    for h in include:
        i = last.get(h, len(canonical))
        while i > 0:
            i -= 1
            if names[i] == h:
                name, value = canonical[i]
                parts.append(name + b":" + value)
                break
        last[h] = i
    return SignedHeaders(include, b"".join(parts))


def sign(
    headers: list[tuple[bytes, bytes]],
    body_hash_b64: bytes,
    key: LoadedKey,
    timestamp: int,
    shared: SignedHeaders | None = None,
) -> Signature:
    """Sign as dkimpy's DKIM.sign does for relaxed/relaxed, without l= and without parsing
    the key: `headers` are (name, value) as they will leave, in order. `shared`: the header
    data signed_headers() gave for these headers (sign_all passes it to every key)."""
    shared = shared or signed_headers(headers)
    include = shared.include
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
        (b"t", str(int(timestamp)).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash_b64),
        # b= on a line of its own, so refolding after it is filled in moves no other tag.
        (b"b", b"0" * 60),
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
    # The DKIM-Signature header last, b= empty, with no trailing CRLF (dkim.hash_headers).
    ((name, value),) = RELAXED.canonicalize_headers(
        [(HEADER_NAME, dkim.RE_BTAG.sub(b"\\1", b" " + unsigned))]
    )
    data = shared.data + name + b":" + value.rstrip()
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        raw = private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        # RFC 8463: Ed25519 signs the SHA-256 hash of the header data.
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        raw = private.sign(digest.finalize())
    else:  # pragma: no cover - the loader admits only these two
        raise TypeError(f"unsupported key {type(private).__name__}")
    fields[-1] = (b"b", base64.b64encode(raw))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    return Signature(key.domain, key.selector, algorithm.decode(), value.decode("ascii"))


def sign_all(
    headers: list[tuple[bytes, bytes]],
    body_hash_b64: bytes,
    keys: list[LoadedKey],
    timestamp: int,
) -> list[Signature]:
    """One signature per key over the same headers and body: the headers are canonicalised
    and selected once for all of them."""
    if not keys:
        return []
    shared = signed_headers(headers)
    return [sign(headers, body_hash_b64, key, timestamp, shared) for key in keys]
