"""SPF record syntax and lookup limits (RFC 7208), checked before any evaluation."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from postwarden.dnsdoctor.lookup import Lookup

MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
QUERYING = {"include", "a", "mx", "ptr", "exists", "redirect"}
MAX_TERMS = 10
MAX_VOID = 2
_TERM = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)([:=/]?)(.*)$")


def spf_records(values: tuple[str, ...]) -> list[str]:
    return [v for v in values if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]


@dataclass
class Term:
    qualifier: str
    name: str
    sep: str
    value: str

    @property
    def text(self) -> str:
        return f"{self.qualifier}{self.name}{self.sep}{self.value}"


@dataclass
class Parsed:
    terms: list[Term] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def all_term(self) -> Term | None:
        return next((t for t in self.terms if t.name == "all"), None)

    def redirect(self) -> Term | None:
        return next((t for t in self.terms if t.name == "redirect"), None)


def _check_ip(kind: str, value: str) -> str:
    addr, _, prefix = value.partition("/")
    try:
        ip = ipaddress.IPv4Address(addr) if kind == "ip4" else ipaddress.IPv6Address(addr)
    except ValueError:
        return f'"{kind}:{value}": "{addr}" is not an IPv{kind[-1]} address'
    if prefix:
        limit = 32 if ip.version == 4 else 128
        if not prefix.isdigit() or int(prefix) > limit:
            return f'"{kind}:{value}": bad prefix length /{prefix}'
    return ""


def parse(record: str) -> Parsed:
    out = Parsed()
    for raw in record.split()[1:]:
        m = _TERM.match(raw)
        if not m:
            out.errors.append(f'"{raw}" is not an SPF term')
            continue
        term = Term(m.group(1), m.group(2).lower(), m.group(3), m.group(4))
        out.terms.append(term)
        if term.sep == "=":
            if term.qualifier:
                out.errors.append(f'"{raw}": a modifier takes no qualifier')
            continue
        if term.name not in MECHANISMS:
            close = [x for x in MECHANISMS if x[0] == term.name[0]]
            out.errors.append(
                f'"{raw}": unknown mechanism "{term.name}"'
                + (f" (did you mean {close[0]}?)" if close else "")
            )
            continue
        if term.name in ("ip4", "ip6"):
            if term.sep != ":" or not term.value:
                out.errors.append(
                    f'"{raw}": {term.name} needs an address, e.g. {term.name}:203.0.113.5'
                )
            elif problem := _check_ip(term.name, term.value):
                out.errors.append(problem)
        elif term.name in ("include", "exists") and (term.sep != ":" or not term.value):
            out.errors.append(
                f'"{raw}": {term.name} needs a domain, e.g. {term.name}:_spf.example.net'
            )
        elif term.name == "all" and term.sep:
            out.errors.append(f'"{raw}": all takes no argument')
    redirects = [t for t in out.terms if t.name == "redirect"]
    if len(redirects) > 1:
        out.errors.append("more than one redirect= modifier")
    if redirects:
        if out.all_term() is not None:
            out.errors.append(f'"{redirects[0].text}" is never used: the record also has "all"')
        elif out.terms[-1].name != "redirect":
            out.warnings.append(f'"{redirects[0].text}" should be the last term')
    if sum(1 for t in out.terms if t.name == "exp") > 1:
        out.errors.append("more than one exp= modifier")
    return out


@dataclass
class Limits:
    terms: int = 0
    voids: int = 0
    unknown: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)


def count_lookups(
    lookup: Lookup, domain: str, parsed: Parsed, limits: Limits | None = None, depth: int = 0
) -> Limits:
    """DNS-querying terms and void lookups, following include and redirect (RFC 7208 4.6.4)."""
    limits = limits or Limits()
    if depth > 12:
        return limits
    for term in parsed.terms:
        if term.name not in QUERYING:
            continue
        limits.terms += 1
        target = term.value.split("/")[0] if term.sep in (":", "=") and term.value else domain
        if "%" in target:  # a macro: depends on the sender, not followed
            continue
        if term.name in ("include", "redirect"):
            answer = lookup.txt(target)
            if answer.status == "unknown":
                limits.unknown.append(answer.error)
                continue
            records = spf_records(answer.values)
            if answer.void or not records:
                limits.voids += 1 if answer.void else 0
                continue
            limits.path.append(target)
            count_lookups(lookup, target, parse(records[0]), limits, depth + 1)
        elif term.name in ("a", "mx"):
            answer = lookup.query(target, "MX" if term.name == "mx" else "A")
            if answer.status == "unknown":
                limits.unknown.append(answer.error)
            elif answer.void and term.name == "a":
                aaaa = lookup.query(target, "AAAA")
                limits.voids += 1 if aaaa.void else 0
            elif answer.void:
                limits.voids += 1
    return limits
