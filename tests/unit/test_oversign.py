"""Every header a receiver shows or acts on is oversigned (decisions.md, check 5): h= names it
once more than it occurs, present or not. Verified against dkimpy: adding any of them breaks
the signature; the e2e test (tests/e2e/test_headers_repair.py) does the same through Postfix with
OpenDKIM too."""

from __future__ import annotations

import pytest

from postwarden.config.keys import LoadedKey, load_key
from postwarden.signing import RelaxedBodyHasher, sign
from postwarden.signing.signer import OVERSIGN, signed_header_names
from tests.dkim_verify import dkimpy_results, records_for
from tests.helpers import write_key

SHOWN = [
    "From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version",
    "Content-Type", "Content-Transfer-Encoding", "List-Id", "List-Help", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
]  # fmt: skip


def test_h_names_each_shown_header_once_more_than_it_occurs() -> None:
    headers = [
        (b"From", b"a@example.com"),
        (b"To", b"b@x.test"),
        (b"To", b"c@x.test"),
        (b"X-A", b"1"),
    ]
    names = signed_header_names(headers)
    assert {n.decode() for n in OVERSIGN} == {h.lower() for h in SHOWN}
    for h in SHOWN:
        present = sum(1 for n, _ in headers if n.decode().lower() == h.lower())
        assert names.count(h.lower().encode()) == present + 1, h
    assert b"x-a" not in names
    assert signed_header_names([(b"List-Foo", b"x")]).count(b"list-foo") == 1  # any List-*


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedKey]:
    out = {}
    for algorithm in ("rsa", "ed25519"):
        path = tmp_path_factory.mktemp("keys") / f"{algorithm}.key"
        write_key(path, algorithm=algorithm)
        out[algorithm] = load_key("example.com", algorithm, str(path), True)
    return out


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("added", SHOWN)
def test_adding_any_shown_header_breaks_the_signature(
    keys: dict[str, LoadedKey], algorithm: str, added: str
) -> None:
    key = keys[algorithm]
    head = [(b"From", b"a@example.com"), (b"To", b"b@x.test"), (b"Subject", b"s")]
    body = b"hello\r\n"
    hasher = RelaxedBodyHasher()
    hasher.update(body)
    sig = sign(head, hasher.digest_b64(), key, 1796000000)
    raw = (
        f"DKIM-Signature: {sig.value}\r\n".encode()
        + b"".join(n + b": " + v + b"\r\n" for n, v in head)
        + b"\r\n"
        + body
    )
    records = records_for([key])
    assert dkimpy_results(raw, records) == [True]
    assert dkimpy_results(f"{added}: x\r\n".encode() + raw, records) == [False]
