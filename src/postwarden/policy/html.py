"""Wrap bare HTML ([headers].wrap_bare_html): a text/html part with no <html> element gets one,
also inside multiparts and in base64 or quoted-printable parts (decoded, wrapped, re-encoded).

Pure. Only the encoded bytes of each wrapped part are replaced, at that part's own offsets in
the body (policy.mime reads the structure): every other part, boundary and line stays as it
was, so nothing else in the message changes, and a plain part holding the same bytes as the
HTML one is never touched. The structure is read without recursion, bounded by
mime.MAX_MIME_DEPTH: a deeper message raises MimeTooDeep, never RecursionError.
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re

from postwarden.policy.mime import MimeScanner

_HTML = re.compile(rb"<html[\s>]", re.IGNORECASE)
_BODY = re.compile(rb"<body[\s>]", re.IGNORECASE)


def _wrap(html: bytes, nl: bytes) -> bytes:
    if _BODY.search(html):
        return b"<html>" + nl + html.rstrip(b"\r\n") + nl + b"</html>" + nl
    return b"<html><body>" + nl + html.rstrip(b"\r\n") + nl + b"</body></html>" + nl


def _encode(data: bytes, cte: str, nl: bytes) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", nl)
    if cte == "quoted-printable":
        text = data.replace(b"\r\n", b"\n")
        return quopri.encodestring(text).replace(b"\n", nl)
    return data


def may_hold_html(headers: list[tuple[str, str]]) -> bool:
    """Whether a message with these headers can hold a text/html part: only a multipart or a
    text/html message can (no Content-Type is text/plain)."""
    types = [v.split(";", 1)[0].strip().lower() for k, v in headers if k.lower() == "content-type"]
    return bool(types) and (types[0].startswith("multipart/") or types[0] == "text/html")


class MimeTooDeep(ValueError):
    """The body's MIME structure cannot be read safely (mime.MAX_MIME_DEPTH); the message is to
    be refused for it (mime_problem() says so before any edit is tried)."""


def _leaf_message(headers: bytes, content: bytes) -> email.message.Message:
    """One leaf part, parsed alone: its own headers and content, never a nested structure."""
    head = headers.rstrip(b"\r\n")
    data = (head + b"\r\n\r\n" if head else b"\r\n") + content
    return email.message_from_bytes(data, policy=email.policy.compat32)


def wrap_bare_html(headers: list[tuple[str, str]], body: bytes) -> bytes | None:
    """The body with every bare text/html part wrapped, or None when none needed it. Each part
    is found by its byte offsets in the body (policy.mime), so only that part changes, even
    when another part holds the same bytes. MimeTooDeep when the structure is too deep."""
    scanner = MimeScanner(headers, keep_leaves=True)
    scanner.feed(body)
    scanner.close()
    if scanner.problem:
        raise MimeTooDeep(scanner.problem)
    top = "".join(f"{name}: {value}\r\n" for name, value in headers).encode(
        "utf-8", "surrogateescape"
    )
    # The line break before a boundary belongs to the boundary, so a part's own text may
    # end without one: take the line ends from the body, and end as the part ended.
    nl = b"\r\n" if b"\r\n" in body else b"\n"
    pieces: list[bytes] = []
    done = 0
    for leaf in scanner.leaves:
        if leaf.content_type != "text/html":
            continue
        raw = body[leaf.content_start : leaf.end]
        if not raw.strip():
            continue
        own = top if leaf.top else body[leaf.header_start : leaf.content_start]
        part = _leaf_message(own, raw)
        if str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment"):
            continue
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes) or _HTML.search(decoded):
            continue
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if cte == "base64":
            # The decoded HTML keeps its own line ends; the wrapper follows them.
            inner_nl = b"\r\n" if b"\r\n" in decoded else b"\n"
            encoded = _encode(_wrap(decoded, inner_nl), cte, nl)
        else:
            text = decoded.replace(b"\r\n", b"\n").replace(b"\n", nl)
            encoded = _encode(_wrap(text, nl), cte, nl)
        encoded = encoded.rstrip(b"\r\n")
        if raw.endswith(b"\n"):
            encoded += nl
        pieces += [body[done : leaf.content_start], encoded]
        done = leaf.end
    if not pieces:
        return None
    pieces.append(body[done:])
    return b"".join(pieces)
