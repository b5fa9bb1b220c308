"""Text as it is stored and shown: readable whatever bytes it held.

pymilter hands header values over decoded with surrogateescape, so a raw Latin-1 byte
(`Subject: Caf\\xe9`) arrives as 'Caf\\udce9', which sqlite3 (and anything that encodes UTF-8
strictly) refuses. `readable` turns such a string back into its bytes and decodes them as
UTF-8, reading each byte that is not UTF-8 as Latin-1: 'Café'. Nothing raises.
"""

from __future__ import annotations

import codecs


def _to_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    # Encoding: an escaped byte (U+DC80..U+DCFF) becomes that byte; any other lone surrogate
    # becomes U+FFFD.
    assert isinstance(exc, UnicodeEncodeError)
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), exc.end


def _latin1(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("postwarden.to_bytes", _to_bytes)
codecs.register_error("postwarden.latin1", _latin1)


def readable(text: str) -> str:
    """`text` as valid Unicode that encodes as UTF-8, its undecodable bytes read as Latin-1."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return text.encode("utf-8", "postwarden.to_bytes").decode("utf-8", "postwarden.latin1")


def readable_value(value: object) -> object:
    return readable(value) if isinstance(value, str) else value
