"""The header From address. Anything ambiguous is no address at all."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass


@dataclass(frozen=True)
class FromResult:
    address: str = ""
    domain: str = ""
    problem: str = ""  # why no single address could be read


def header_from(values: list[str]) -> FromResult:
    if not values:
        return FromResult(problem="the message has no From header")
    if len(values) > 1:
        return FromResult(
            problem=f"the message has {len(values)} From headers; it needs exactly one"
        )
    value = values[0]
    if any(c in value for c in "\0\r\n"):
        return FromResult(problem="the From header contains a NUL, CR or LF")
    addresses = [addr for _, addr in email.utils.getaddresses([value]) if addr]
    # An @ outside the one address (a display name or comment holding another address, a
    # second address the parser dropped) parses two ways: never a pass.
    if len(addresses) != 1 or value.count("@") != 1:
        return FromResult(problem=f"the From header must hold exactly one address, not {value!r}")
    addr = addresses[0]
    local, sep, domain = addr.rpartition("@")
    if not sep or not local or not domain or "@" in domain:
        return FromResult(problem=f"the From header address {addr!r} has no domain")
    return FromResult(address=addr, domain=domain.lower().rstrip("."))
