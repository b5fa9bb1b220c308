"""`dns-check --notify-changes`: what changed since the last run, as a mail to [rate].notify.

Per domain and area (spf, dkim, dmarc, mx; ptr for the server) the status is the worst of its
findings: pass < warn < fail. "unknown" (a timeout, a SERVFAIL) is never a change, either way:
the area keeps its last known status. An area never checked before counts as passing, so a
first run mails about what is wrong and says nothing about what is right. A change either way
is mailed: a new failure with its fix, and a failure that is now mended.
"""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.dnsdoctor.doctor import Finding, Report
from postwarden.textsafe import printable, printable_lines

RANK = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Change:
    domain: str
    area: str
    before: str
    after: str
    findings: tuple[Finding, ...]  # the area's findings now that are not a pass


def status_of(findings: list[Finding]) -> str | None:
    """The worst known status, or None when every finding is unknown."""
    known = [f.status for f in findings if f.status in RANK]
    return max(known, key=RANK.__getitem__) if known else None


def changes(before: dict[tuple[str, str], str], report: Report) -> list[Change]:
    out: list[Change] = []
    groups = [*report.domains.items(), *([("server", report.server)] if report.server else [])]
    for domain, findings in groups:
        areas: dict[str, list[Finding]] = {}
        for f in findings:
            areas.setdefault(f.area, []).append(f)
        for area, fs in areas.items():
            now = status_of(fs)
            was = before.get((domain, area), "pass")
            if now is None or now == was:
                continue
            out.append(
                Change(domain, area, was, now, tuple(f for f in fs if f.status in ("warn", "fail")))
            )
    return out


def notice(found: list[Change], checked_at: str) -> tuple[str, str]:
    """The subject and body of the mail to [rate].notify."""
    domains = sorted({c.domain for c in found})
    subject = "postwarden: DNS changed for " + ", ".join(domains[:3])
    if len(domains) > 3:
        subject += f" and {len(domains) - 3} more"
    lines = [f"postwarden dns-check at {checked_at} found changes since its last run.", ""]
    for domain in domains:
        lines.append(printable(domain))
        for c in (c for c in found if c.domain == domain):
            lines.append(f"  {c.area}: was {c.before}, now {c.after.upper()}")
            if c.after == "pass":
                lines.append("    mended: every check of this area passes again")
            for f in c.findings:
                lines.append(f"    {f.status.upper()}  {printable(f.message)}")
                for i, fix in enumerate(f.fix.splitlines()):
                    lines.append(
                        ("      fix: " if i == 0 else "           ") + printable_lines(fix)
                    )
        lines.append("")
    named = " ".join(d for d in domains if d != "server")
    lines.append(f"Every finding: postwarden dns-check {named}".rstrip())
    return subject, "\n".join(lines) + "\n"
