"""Wrap bare HTML ([headers].wrap_bare_html): a text/html part with no <html> element gets one,
also inside multiparts and in base64 or quoted-printable parts (decoded, wrapped, re-encoded).

Pure. Only the encoded bytes of each wrapped part are replaced in the body: every other part,
boundary and line stays as it was, so nothing else in the message changes.
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re

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


def wrap_bare_html(headers: list[tuple[str, str]], body: bytes) -> bytes | None:
    """The body with every bare text/html part wrapped, or None when none needed it."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    msg = email.message_from_bytes(
        head.encode("utf-8", "surrogateescape") + b"\r\n" + body, policy=email.policy.compat32
    )
    new_body, changed = body, False
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() != "text/html":
            continue
        if str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment"):
            continue
        raw = part.get_payload()
        if not isinstance(raw, str) or not raw.strip():
            continue
        try:
            raw_bytes = raw.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            # An 8-bit part comes back decoded with its charset: encode it the same way.
            try:
                raw_bytes = raw.encode(part.get_content_charset() or "utf-8", "surrogateescape")
            except (LookupError, UnicodeEncodeError):
                continue
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes) or _HTML.search(decoded):
            continue
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        # The line break before a boundary belongs to the boundary, so a part's own text may
        # end without one: take the line ends from the body, and end as the part ended.
        nl = b"\r\n" if b"\r\n" in body else b"\n"
        if cte == "base64":
            # The decoded HTML keeps its own line ends; the wrapper follows them.
            inner_nl = b"\r\n" if b"\r\n" in decoded else b"\n"
            encoded = _encode(_wrap(decoded, inner_nl), cte, nl)
        else:
            text = decoded.replace(b"\r\n", b"\n").replace(b"\n", nl)
            encoded = _encode(_wrap(text, nl), cte, nl)
        encoded = encoded.rstrip(b"\r\n")
        if raw_bytes.endswith(b"\n"):
            encoded += nl
        at = new_body.find(raw_bytes)
        if at < 0:
            continue
        new_body = new_body[:at] + encoded + new_body[at + len(raw_bytes) :]
        changed = True
    return new_body if changed else None
