"""The checks, run concurrently over the hosted domains, and the report."""

from __future__ import annotations

import base64
import ipaddress
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.resolver
import spf

from postwarden import suffixes
from postwarden.config import Config
from postwarden.config.keys import LoadedKey
from postwarden.dnsdoctor.lookup import Answer, Lookup, make_resolver
from postwarden.dnsdoctor.spfrecord import MAX_TERMS, MAX_VOID, count_lookups, parse, spf_records
from postwarden.keytools import txt_record
from postwarden.reports.advice import Readiness, advise
from postwarden.store import records

WORKERS = 64  # domains checked at once
MARKS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "unknown": "UNKN"}


@dataclass
class Finding:
    area: str  # spf | dkim | dmarc | mx | ptr
    status: str  # pass | warn | fail | unknown
    message: str
    fix: str = ""


@dataclass
class Report:
    checked_at: str
    domains: dict[str, list[Finding]] = field(default_factory=dict)
    server: list[Finding] = field(default_factory=list)
    unreachable: bool = False

    def all(self) -> list[tuple[str, Finding]]:
        out = [(d, f) for d, fs in self.domains.items() for f in fs]
        return out + [("server", f) for f in self.server]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(MARKS, 0)
        for _, f in self.all():
            counts[f.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        return self.counts()["fail"] > 0

    def as_json(self) -> str:
        return json.dumps(
            {
                "checked_at": self.checked_at,
                "domains": {d: [asdict(f) for f in fs] for d, fs in self.domains.items()},
                "server": [asdict(f) for f in self.server],
                "summary": self.counts(),
            },
            indent=2,
            sort_keys=True,
        )

    def as_text(self) -> str:
        lines = []
        groups = [*self.domains.items(), *([("server", self.server)] if self.server else [])]
        for name, findings in groups:
            lines.append(name)
            for f in findings:
                lines.append(f"  {MARKS[f.status]}  {f.area:<6} {f.message}")
                for i, fix_line in enumerate(f.fix.splitlines()):
                    lines.append(("        fix: " if i == 0 else "             ") + fix_line)
        c = self.counts()
        lines.append(
            f"{len(self.domains)} domain(s): {c['pass']} pass, {c['warn']} warn, {c['fail']} fail,"
            f" {c['unknown']} unknown"
        )
        return "\n".join(lines)


def _unknown(area: str, answer: Answer) -> Finding:
    return Finding(area, "unknown", f"no answer ({answer.error}): not judged; run again later")


# ---- SPF ---------------------------------------------------------------------------------------


def suggested_spf(addresses: list[str], current: str = "") -> str:
    """The record that authorises every server address, keeping what `current` has."""
    wanted = [f"ip{ipaddress.ip_address(a).version}:{a}" for a in addresses]
    if not current:
        return " ".join(["v=spf1", *wanted, "-all"])
    terms = current.split()
    kept = [
        t
        for t in terms[1:]
        if t.lstrip("+-~?").lower() != "all" and not t.lower().startswith("redirect=")
    ]
    extra = [w for w in wanted if w not in kept]
    tail = [
        t
        for t in terms[1:]
        if t.lstrip("+-~?").lower() == "all" or t.lower().startswith("redirect=")
    ]
    tail = ["-all" if t in ("+all", "all", "?all") else t for t in tail] or ["-all"]
    return " ".join(["v=spf1", *extra, *kept, *tail])


def check_spf(lookup: Lookup, domain: str, config: Config) -> list[Finding]:
    answer = lookup.txt(domain)
    if answer.status == "unknown":
        return [_unknown("spf", answer)]
    addresses = config.daemon.server.addresses
    records = spf_records(answer.values)
    if not records:
        return [
            Finding(
                "spf", "fail", "no SPF record", f'{domain}. IN TXT "{suggested_spf(addresses)}"'
            )
        ]
    if len(records) > 1:
        return [
            Finding(
                "spf",
                "fail",
                f"{len(records)} SPF records: receivers treat that as a permanent error",
                "publish one record that merges them:\n" + "\n".join(records),
            )
        ]
    record = records[0]
    parsed = parse(record)
    out = [Finding("spf", "pass", f"one record: {record}")]
    for error in parsed.errors:
        out.append(
            Finding(
                "spf",
                "fail",
                f"syntax: {error}",
                f'{domain}. IN TXT "{suggested_spf(addresses, record)}"',
            )
        )
    for warning in parsed.warnings:
        out.append(Finding("spf", "warn", warning))
    if parsed.errors:
        return out
    limits = count_lookups(lookup, domain, parsed)
    if limits.unknown:
        out.append(Finding("spf", "unknown", f"lookup count not known: {limits.unknown[0]}"))
    elif limits.terms > MAX_TERMS:
        out.append(
            Finding(
                "spf",
                "fail",
                f"{limits.terms} DNS-querying terms (include, a, mx, ptr, exists, redirect): more than {MAX_TERMS}",
                "replace includes with the ip4:/ip6: ranges they stand for, or drop unused ones",
            )
        )
    else:
        out.append(
            Finding("spf", "pass", f"{limits.terms} DNS-querying terms (at most {MAX_TERMS})")
        )
    if not limits.unknown:
        if limits.voids > MAX_VOID:
            out.append(
                Finding(
                    "spf",
                    "fail",
                    f"{limits.voids} void lookups (at most {MAX_VOID})",
                    "remove the include, a or mx terms that name domains with no records",
                )
            )
        else:
            out.append(Finding("spf", "pass", f"{limits.voids} void lookups (at most {MAX_VOID})"))
    all_term = parsed.all_term()
    if all_term is None and parsed.redirect() is None:
        out.append(
            Finding(
                "spf",
                "warn",
                "no all term: mail from anywhere else is neutral",
                f'end the record with -all: "{suggested_spf(addresses, record)}"',
            )
        )
    elif all_term is not None:
        q = all_term.qualifier or "+"
        if q in "-~":
            out.append(Finding("spf", "pass", f"ends with {q}all"))
        elif q == "?":
            out.append(
                Finding("spf", "warn", "?all: mail from anywhere is neutral", "use ~all or -all")
            )
        else:
            out.append(
                Finding(
                    "spf",
                    "fail",
                    "+all authorises every host on the internet",
                    f'{domain}. IN TXT "{suggested_spf(addresses, record)}"',
                )
            )
    for address in addresses:
        result, explanation = _check_host(address, domain, config)
        if result == "pass":
            out.append(Finding("spf", "pass", f"check_host({address}) = pass"))
        elif result in ("temperror",):
            out.append(
                Finding("spf", "unknown", f"check_host({address}) = temperror: {explanation}")
            )
        else:
            out.append(
                Finding(
                    "spf",
                    "fail",
                    f"check_host({address}) = {result}: this server may not send for {domain}",
                    f'{domain}. IN TXT "{suggested_spf(addresses, record)}"',
                )
            )
    return out


def _check_host(address: str, domain: str, config: Config) -> tuple[str, str]:
    q = spf.query(
        i=address,
        s=f"postmaster@{domain}",
        h=config.daemon.server.hostname or domain,
        querytime=config.daemon.dns.timeout * 4,
    )
    result, _code, explanation = q.check()
    return str(result), str(explanation)


# ---- DKIM --------------------------------------------------------------------------------------


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            tags[k.strip().lower()] = "".join(v.split())
    return tags


def check_dkim(lookup: Lookup, domain: str, keys: list[LoadedKey]) -> list[Finding]:
    out = []
    for key in keys:
        name = f"{key.selector}._domainkey.{domain}"
        state = "active" if key.active else "staged"
        answer = lookup.txt(name)
        if answer.status == "unknown":
            out.append(_unknown("dkim", answer))
            continue
        records = [v for v in answer.values if "p=" in v]
        if not records:
            status = "fail" if key.active else "warn"
            out.append(
                Finding(
                    "dkim",
                    status,
                    f"{key.selector} ({state} {key.algorithm}): no record at {name}",
                    txt_record(key),
                )
            )
            continue
        tags = _tags(records[0])
        problems = []
        if tags.get("v", "DKIM1") != "DKIM1":
            problems.append(f"v={tags['v']} (must be DKIM1)")
        if tags.get("k", "rsa") != key.algorithm:
            problems.append(f"k={tags.get('k', 'rsa')} but the key on disk is {key.algorithm}")
        p = tags.get("p")
        if p is None:
            problems.append("no p= tag")
        elif p == "":
            problems.append("p= is empty: the key is revoked")
        elif p != key.public_key_b64():
            try:
                base64.b64decode(p, validate=True)
                problems.append("p= does not match the private key on disk")
            except ValueError:
                problems.append("p= is not valid base64")
        if problems:
            status = "fail" if key.active else "warn"
            out.append(
                Finding(
                    "dkim",
                    status,
                    f"{key.selector} ({state}): " + "; ".join(problems),
                    txt_record(key),
                )
            )
        else:
            out.append(
                Finding(
                    "dkim",
                    "pass",
                    f"{key.selector} ({state} {key.algorithm}, {key.bits} bits): published and matches the key",
                )
            )
    return out


# ---- DMARC, MX ----------------------------------------------------------------------------------


def check_dmarc(lookup: Lookup, domain: str, readiness: Readiness | None = None) -> list[Finding]:
    org = suffixes.organisational(domain)
    names = [f"_dmarc.{domain}"] + ([f"_dmarc.{org}"] if org != domain else [])
    fix = f'_dmarc.{org}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{org}"'
    for name in names:
        answer = lookup.txt(name)
        if answer.status == "unknown":
            return [_unknown("dmarc", answer)]
        records = [v for v in answer.values if v.replace(" ", "").lower().startswith("v=dmarc1")]
        if not records:
            continue
        if len(records) > 1:
            return [
                Finding(
                    "dmarc", "fail", f"{len(records)} DMARC records at {name}: none applies", fix
                )
            ]
        tags = _tags(records[0])
        where = "" if name == names[0] else f" (from the organisational domain {org})"
        p = tags.get("p", "").lower()
        if p not in ("none", "quarantine", "reject"):
            return [
                Finding(
                    "dmarc",
                    "fail",
                    f"{name}: p= is missing or invalid ({tags.get('p', '')!r}){where}",
                    fix,
                )
            ]
        sp = tags.get("sp", "").lower()
        if sp and sp not in ("none", "quarantine", "reject"):
            return [Finding("dmarc", "fail", f"{name}: sp={sp} is invalid", fix)]
        out = [
            Finding(
                "dmarc",
                "pass",
                f"p={p}" + (f", sp={sp}" if sp else f", sp={p} (inherits p)") + where,
            )
        ]
        # The next step and its record: the same advice `postwarden reports` gives.
        advice = advise(domain, name, records[0], readiness, org)
        if p == "none":
            out.append(
                Finding(
                    "dmarc",
                    "warn",
                    "p=none: monitoring only, nothing is refused; " + advice.message,
                    advice.record,
                )
            )
        elif p == "quarantine" and advice.step == "reject":
            out.append(Finding("dmarc", "warn", advice.message, advice.record))
        if "rua" not in tags:
            out.append(
                Finding(
                    "dmarc",
                    "warn",
                    "no rua=: nobody receives aggregate reports",
                    f"add rua=mailto:dmarc-reports@{org}",
                )
            )
        return out
    return [Finding("dmarc", "fail", f"no DMARC record at {' or '.join(names)}", fix)]


def check_mx(lookup: Lookup, domain: str, hostname: str) -> list[Finding]:
    answer = lookup.query(domain, "MX")
    if answer.status == "unknown":
        return [_unknown("mx", answer)]
    if answer.void:
        return [
            Finding(
                "mx",
                "warn",
                "no MX: replies and bounces to this domain go to its A record, if any",
                f"{domain}. IN MX 10 {hostname or 'mail.' + domain}.",
            )
        ]
    return [Finding("mx", "pass", "MX " + ", ".join(answer.values))]


def check_server(lookup: Lookup, config: Config) -> list[Finding]:
    hostname = config.daemon.server.hostname.lower().rstrip(".")
    out = []
    if not hostname:
        return [
            Finding(
                "ptr",
                "warn",
                "[server].hostname is not set: PTR and FCrDNS not checked",
                'set hostname = "mail.example.net" in postwarden.toml',
            )
        ]
    for address in config.daemon.server.addresses:
        ptr = lookup.ptr(address)
        if ptr.status == "unknown":
            out.append(_unknown("ptr", ptr))
            continue
        if hostname not in ptr.values:
            found = ", ".join(ptr.values) or "none"
            out.append(
                Finding(
                    "ptr",
                    "fail",
                    f"PTR of {address} is {found}, not {hostname}",
                    f"ask whoever runs {address} (your provider) to set its PTR to {hostname}",
                )
            )
            continue
        kind = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        forward = lookup.query(hostname, kind)
        if forward.status == "unknown":
            out.append(_unknown("ptr", forward))
        elif address not in forward.values:
            out.append(
                Finding(
                    "ptr",
                    "fail",
                    f"{hostname} does not resolve back to {address} (FCrDNS)",
                    f"{hostname}. IN {kind} {address}",
                )
            )
        else:
            out.append(Finding("ptr", "pass", f"{address} -> {hostname} -> {address}"))
    return out


# ---- run ---------------------------------------------------------------------------------------


def check_domain(
    lookup: Lookup, domain: str, config: Config, readiness: Readiness | None = None
) -> list[Finding]:
    return [
        *check_spf(lookup, domain, config),
        *check_dkim(lookup, domain, config.keys.get(domain, [])),
        *check_dmarc(lookup, domain, readiness),
        *check_mx(lookup, domain, config.daemon.server.hostname),
    ]


def run(
    config: Config,
    domains: list[str] | None = None,
    now: datetime | None = None,
    progress: Any = None,
    readiness: dict[str, Readiness] | None = None,
) -> Report:
    """`readiness`: what the stored DMARC reports say per domain (reports.summary.readiness),
    for the same next-step advice `postwarden reports` gives."""
    resolver = make_resolver(config.daemon.dns.nameservers, config.daemon.dns.timeout)
    # pyspf asks dnspython's default resolver: point it at the same servers.
    dns.resolver.default_resolver = resolver
    lookup = Lookup(resolver)
    names = domains or sorted(config.policy.domains)
    report = Report(checked_at=(now or datetime.now(UTC)).isoformat())
    # One query first: a nameserver that does not answer is reported within one timeout,
    # not after every domain's queries (and pyspf's) have timed out one by one.
    lookup.query(names[0] if names else ".", "SOA")
    if lookup.unreachable:
        report.unreachable = True
        return report
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {
            name: pool.submit(check_domain, lookup, name, config, (readiness or {}).get(name))
            for name in names
        }
        server = pool.submit(check_server, lookup, config)
        for i, name in enumerate(names, 1):
            report.domains[name] = futures[name].result()
            if progress:
                progress(i, len(names), name)
        report.server = server.result()
    report.unreachable = lookup.queries > 0 and lookup.unreachable == lookup.queries
    return report


def record(db: Any, report: Report) -> None:
    """Store every finding with its run's time: `dns-check` and the TUI's Domains screen both
    write here, and the screen shows each domain's latest run."""
    records.add_dns_findings(
        db,
        report.checked_at,
        [(d, f.area, f.status, f.message, f.fix) for d, f in report.all()],
    )


def latest(db: Any) -> dict[str, tuple[str, list[Finding]]]:
    """Each domain's findings from its most recent check: {domain: (run_at, findings)}."""
    out: dict[str, tuple[str, list[Finding]]] = {}
    for domain, run_at, area, status, message, fix in records.latest_dns_findings(db):
        out.setdefault(domain, (run_at, []))[1].append(Finding(area, status, message, fix or ""))
    return out
