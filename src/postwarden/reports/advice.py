"""The next DMARC step for a domain, and the record to publish for it: one function that
`postwarden reports`, the TUI and `dns-check` all call, so they never disagree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STEPS = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class Readiness:
    """What the reports of the last ready_days + 1 UTC days say about one domain."""

    days: int  # distinct UTC days the reports cover
    messages: int
    passed: int
    own_dkim_failures: int  # this server's messages that failed DKIM
    ready_days: int
    ready_share: float

    @property
    def share(self) -> float:
        return self.passed / self.messages if self.messages else 0.0

    @property
    def ready(self) -> bool:
        return (
            self.days >= self.ready_days
            and self.messages > 0
            and self.share >= self.ready_share
            and self.own_dkim_failures == 0
        )


@dataclass(frozen=True)
class Advice:
    step: str  # "stay" | "quarantine" | "reject" | "publish"
    current: str  # the published p=, "" when none is published, "?" when DNS did not answer
    message: str
    record: str = ""  # the zone-file line to publish, when there is a step to take

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tags(record: str) -> list[tuple[str, str]]:
    """A DMARC record's tags in their order, names lower-cased."""
    out = []
    for part in record.split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            out.append((k.strip().lower(), v.strip()))
    return out


def with_policy(name: str, record: str, p: str, org: str) -> str:
    """The zone-file line for `record` with p= set to `p` (every other tag kept; rua= added
    when there is none, so reports keep coming)."""
    current = tags(record) if record else []
    if not current or current[0] != ("v", "DMARC1"):
        current = [("v", "DMARC1"), *[t for t in current if t[0] != "v"]]
    out, done = [], False
    for k, v in current:
        if k == "p":
            out.append(("p", p))
            done = True
        else:
            out.append((k, v))
    if not done:
        out.insert(1, ("p", p))
    if not any(k == "rua" for k, _ in out):
        out.append(("rua", f"mailto:dmarc-reports@{org}"))
    text = "; ".join(f"{k}={v}" for k, v in out)
    return f'{name.rstrip(".")}. IN TXT "{text}"'


def advise(
    domain: str, name: str, record: str | None, readiness: Readiness | None, org: str = ""
) -> Advice:
    """`record` is the published DMARC record at `name` ("" none, None DNS did not answer);
    `readiness` None when no reports were read (dns-check without any)."""
    org = org or domain
    if record is None:
        return Advice("stay", "?", f"{name}: DNS did not answer; the next step is not known")
    p = dict(tags(record)).get("p", "").lower() if record else ""
    if p not in STEPS:
        return Advice(
            "publish",
            p,
            f"no valid DMARC record at {name}: publish one with p=none to start receiving reports",
            with_policy(f"_dmarc.{org}", "", "none", org),
        )
    if p == "reject":
        return Advice("stay", p, "p=reject: the strictest policy; stay")
    nxt = STEPS[STEPS.index(p) + 1]
    target = with_policy(name, record, nxt, org)
    if readiness is None:
        return Advice(
            "stay",
            p,
            f"p={p}: move to p={nxt} once `postwarden reports` shows the reports clean",
            target,
        )
    r = readiness
    why = []
    if r.days < r.ready_days:
        why.append(f"reports cover {r.days} of the {r.ready_days} days needed")
    if r.messages and r.share < r.ready_share:
        why.append(f"{r.share:.1%} passed DMARC (at least {r.ready_share:.0%} needed)")
    if not r.messages:
        why.append("no reported mail")
    if r.own_dkim_failures:
        why.append(f"{r.own_dkim_failures} message(s) from this server failed DKIM")
    if r.ready:
        return Advice(
            nxt,
            p,
            f"p={p}: {r.days} day(s) of reports, {r.share:.1%} of {r.messages} message(s)"
            f" passed DMARC, none of this server's failed DKIM: move to p={nxt}",
            target,
        )
    return Advice("stay", p, f"p={p}: stay for now: " + "; ".join(why))
