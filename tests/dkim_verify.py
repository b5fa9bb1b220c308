"""Verify DKIM signatures two ways: dkimpy, and OpenDKIM's test mode (a verifier we did not
write). Public keys come from a table, never from DNS."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import dkim

from postwarden.config.keys import LoadedKey


def txt_record(key: LoadedKey) -> str:
    return f"v=DKIM1; k={key.algorithm}; p={key.public_key_b64()}"


def records_for(keys: list[LoadedKey]) -> dict[str, str]:
    return {f"{k.selector}._domainkey.{k.domain}": txt_record(k) for k in keys}


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dkimpy_results(message: bytes, records: dict[str, str]) -> list[bool]:
    message = crlf(message)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    d = dkim.DKIM(message)
    count = sum(1 for n, _ in d.headers if n.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dns)))
        except dkim.DKIMException:  # dkimpy raises for some failures (a body hash mismatch)
            results.append(False)
    return results


def opendkim_results(message: bytes, records: dict[str, str]) -> list[str]:
    """dkim= results, one per signature, from `opendkim -t` with TestPublicKeys."""
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text("".join(f"{name} {value}\n" for name, value in records.items()))
        conf = Path(tmp) / "opendkim.conf"
        conf.write_text(f"TestPublicKeys {keys}\nMode v\nSyslog no\n")
        msg = Path(tmp) / "msg.eml"
        # Over SMTP a message always ends with CRLF; opendkim -t reads nothing from a file
        # that does not.
        data = crlf(message)
        msg.write_bytes(data if data.endswith(b"\r\n") else data + b"\r\n")
        out = subprocess.run(
            ["opendkim", "-x", str(conf), "-vvv", "-t", str(msg)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    text = out.stdout + out.stderr
    return re.findall(r"\bdkim=([a-z]+)", text)


def signature_tags(message: bytes) -> list[dict[str, str]]:
    d = dkim.DKIM(crlf(message))
    tags = []
    for name, value in d.headers:
        if name.lower() == b"dkim-signature":
            parsed = dkim.util.parse_tag_value(value)
            tags.append({k.decode(): v.decode() for k, v in parsed.items()})
    return tags
