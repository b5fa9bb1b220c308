"""`postwarden reports`: per domain, what the reports say, the sources in three groups (this
server, authorised elsewhere, failing) with their reverse names, postwarden's own count of
what it signed, and the next DMARC step; TLS reports per policy domain."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dns.exception
import sqlite_utils

from postwarden import suffixes
from postwarden.config import Config
from postwarden.dnsdoctor.lookup import Lookup, make_resolver
from postwarden.reports.advice import Advice, Readiness, advise
from postwarden.store import queries
from postwarden.store import reports as store

GROUPS = ("this_server", "authorised_elsewhere", "failing")
PTR_FRESH = 7 * 86400  # a cached reverse name is used for a week
PTR_BUDGET = 8.0  # seconds all reverse lookups of one run may take together
PTR_TIMEOUT = 2.0  # seconds one lookup may take
PTR_WORKERS = 16


@dataclass
class Source:
    ip: str
    group: str
    name: str | None = None  # reverse name; None when not known (DNS unreachable)
    messages: int = 0
    dmarc_pass: int = 0
    spf_aligned: int = 0
    dkim_aligned: int = 0
    dkim_fail: int = 0
    header_from: set[str] = field(default_factory=set)

    def add(self, count: int, dkim: str, spf: str, header_from: str) -> None:
        self.messages += count
        if dkim == "pass" or spf == "pass":
            self.dmarc_pass += count
        if spf == "pass":
            self.spf_aligned += count
        if dkim == "pass":
            self.dkim_aligned += count
        else:
            self.dkim_fail += count
        if header_from:
            self.header_from.add(header_from)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "name": self.name,
            "messages": self.messages,
            "dmarc_pass": self.dmarc_pass,
            "spf_aligned": self.spf_aligned,
            "dkim_aligned": self.dkim_aligned,
            "dkim_fail": self.dkim_fail,
            "header_from": sorted(self.header_from),
        }


def _share(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0


@functools.lru_cache(maxsize=4096)
def day_of(begin: int, end: int) -> str:
    """The UTC day a report is counted on: the day of its date range's middle."""
    return datetime.fromtimestamp((begin + end) // 2, UTC).date().isoformat()


def _is_server(ip: str, servers: set[str]) -> bool:
    # Stored addresses are in ipaddress's normal form (dmarc.parse), as `servers` are.
    return ip in servers


def group_of(ip: str, dkim: str, spf: str, servers: set[str]) -> str:
    if _is_server(ip, servers):
        return "this_server"
    if dkim == "pass" or spf == "pass":
        return "authorised_elsewhere"
    return "failing"


def merge_ranges(ranges: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The reports' date ranges (inclusive ends) as disjoint intervals, in order: the times
    postwarden's own decisions are counted over, once each even when reports overlap."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# ---- reverse names ------------------------------------------------------------------------------


def reverse_names(
    db: sqlite_utils.Database,
    config: Config,
    ips: list[str],
    *,
    resolve: bool = True,
    budget: float = PTR_BUDGET,
    lock: Any = None,
) -> dict[str, str | None]:
    """Each IP's reverse name: from the cache, else asked at [dns].nameservers, all of them
    within `budget` seconds; an IP DNS did not answer for is None (and not cached)."""
    now = time.time()

    def locked(fn: Any, *a: Any) -> Any:
        if lock is None:
            return fn(*a)
        with lock:
            return fn(*a)

    cached = locked(store.cached_names, db, ips, now - PTR_FRESH)
    out: dict[str, str | None] = {ip: cached.get(ip) for ip in ips}
    todo = [ip for ip in ips if ip not in cached]
    if not todo or not resolve:
        return out
    dns_cfg = config.daemon.dns
    found: dict[str, str] = {}
    try:
        lookup = Lookup(make_resolver(dns_cfg.nameservers, min(dns_cfg.timeout, PTR_TIMEOUT)))
        first = lookup.ptr(todo[0])  # DNS unreachable: one timeout, not one per address
    except dns.exception.DNSException:
        return out
    if first.status == "unknown" and lookup.unreachable:
        return out
    found[todo[0]] = first.values[0] if first.values else ""
    pool = ThreadPoolExecutor(PTR_WORKERS)
    try:
        futures = {pool.submit(lookup.ptr, ip): ip for ip in todo[1:]}
        done, _ = wait(futures, timeout=budget)
        for fut in done:
            try:
                answer = fut.result()
            except dns.exception.DNSException:
                continue  # not known, not cached
            if answer.status == "unknown":
                continue
            found[futures[fut]] = answer.values[0] if answer.values else ""
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out.update(found)
    if found:
        locked(store.cache_names, db, found, now)
    return out


# ---- the published record ----------------------------------------------------------------------


def published_record(lookup: Lookup, domain: str) -> tuple[str, str | None]:
    """(where, the DMARC record) for `domain`: its own, else its organisational domain's;
    "" when there is none, None when DNS did not answer."""
    org = suffixes.organisational(domain)
    names = [f"_dmarc.{domain}"] + ([f"_dmarc.{org}"] if org != domain else [])
    for name in names:
        answer = lookup.txt(name)
        if answer.status == "unknown":
            return names[0], None
        records = [v for v in answer.values if v.replace(" ", "").lower().startswith("v=dmarc1")]
        if len(records) == 1:
            return name, records[0]
    return names[0], ""


def published_records(
    config: Config, domains: list[str], budget: float = PTR_BUDGET
) -> dict[str, tuple[str, str | None]]:
    """published_record for every domain at once, all within `budget` seconds."""
    dns_cfg = config.daemon.dns
    out: dict[str, tuple[str, str | None]] = {}
    if not domains:
        return out
    try:
        lookup = Lookup(make_resolver(dns_cfg.nameservers, min(dns_cfg.timeout, budget)))
        out[domains[0]] = published_record(lookup, domains[0])
    except dns.exception.DNSException:
        return out
    if out[domains[0]][1] is None and lookup.unreachable:
        return out  # DNS unreachable: one timeout, not one per domain
    domains = domains[1:]
    pool = ThreadPoolExecutor(PTR_WORKERS)
    try:
        futures = {pool.submit(published_record, lookup, d): d for d in domains}
        done, _ = wait(futures, timeout=budget)
        for fut in done:
            try:
                out[futures[fut]] = fut.result()
            except dns.exception.DNSException:
                continue
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return out


# ---- readiness ---------------------------------------------------------------------------------


def readiness(
    db: sqlite_utils.Database, config: Config, now: datetime, domain: str | None = None
) -> dict[str, Readiness]:
    """Per domain, the reports of the last ready_days + 1 UTC days (today included)."""
    rp = config.policy.reports
    first = (now.astimezone(UTC) - timedelta(days=rp.ready_days)).date()
    start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    servers = {str(ipaddress.ip_address(a)) for a in config.daemon.server.addresses}
    days: dict[str, set[str]] = defaultdict(set)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for rep in store.dmarc_reports(db, since=start, until=int(now.timestamp()) + 1, domain=domain):
        if day_of(rep["begin"], rep["end"]) >= first.isoformat():
            days[rep["domain"]].add(day_of(rep["begin"], rep["end"]))
    for row in store.dmarc_rows(db, since=start, until=int(now.timestamp()) + 1, domain=domain):
        if day_of(row.begin, row.end) < first.isoformat():
            continue
        t = totals[row.domain]
        t[0] += row.count
        if row.dkim == "pass" or row.spf == "pass":
            t[1] += row.count
        if _is_server(row.source_ip, servers) and row.dkim != "pass":
            t[2] += row.count
    return {
        d: Readiness(
            days=len(days[d]),
            messages=totals[d][0],
            passed=totals[d][1],
            own_dkim_failures=totals[d][2],
            ready_days=rp.ready_days,
            ready_share=rp.ready_share,
        )
        for d in sorted(set(days) | set(totals))
    }


# ---- the summary -------------------------------------------------------------------------------


def summarise(
    db: sqlite_utils.Database,
    config: Config,
    now: datetime,
    *,
    since: str = "30d",
    domain: str | None = None,
    resolve: bool = True,
    lock: Any = None,
) -> dict[str, Any]:
    """Everything `postwarden reports --json` prints. `lock` serialises the database with
    other threads (the TUI's backend lock); DNS runs outside it."""

    def locked(fn: Any, *a: Any, **kw: Any) -> Any:
        if lock is None:
            return fn(*a, **kw)
        with lock:
            return fn(*a, **kw)

    start_iso = queries.point_in_time(since, now)
    start = int(datetime.fromisoformat(start_iso).timestamp())
    end = int(now.timestamp()) + 1
    domain = domain.lower().rstrip(".") if domain else None
    servers = {str(ipaddress.ip_address(a)) for a in config.daemon.server.addresses}
    rows = locked(store.dmarc_rows, db, since=start, until=end, domain=domain)
    reps = locked(store.dmarc_reports, db, since=start, until=end, domain=domain)
    ready = locked(readiness, db, config, now, domain)

    per: dict[str, dict[str, Any]] = {}

    def entry(d: str) -> dict[str, Any]:
        if d not in per:
            per[d] = {
                "domain": d,
                "messages": 0,
                "dmarc_pass": 0,
                "spf_aligned": 0,
                "dkim_aligned": 0,
                "dispositions": defaultdict(int),
                "reporters": defaultdict(list),
                "published": {},
                "daily": defaultdict(lambda: [0, 0]),
                "sources": {},
                "ranges": set(),
            }
        return per[d]

    for rep in reps:
        e = entry(rep["domain"])
        e["reporters"][rep["org_name"]].append(rep["report_id"])
        e["published"] = rep["policy"] or e["published"]
        e["daily"][day_of(rep["begin"], rep["end"])]  # a day with a report, even of no rows
    for row in rows:
        e = entry(row.domain)
        e["messages"] += row.count
        passed = row.dkim == "pass" or row.spf == "pass"
        e["dmarc_pass"] += row.count if passed else 0
        e["spf_aligned"] += row.count if row.spf == "pass" else 0
        e["dkim_aligned"] += row.count if row.dkim == "pass" else 0
        e["dispositions"][row.disposition or "none"] += row.count
        day = e["daily"][day_of(row.begin, row.end)]
        day[0] += row.count
        day[1] += row.count if passed else 0
        key = (row.source_ip, group_of(row.source_ip, row.dkim, row.spf, servers))
        src = e["sources"].setdefault(key, Source(row.source_ip, key[1]))
        src.add(row.count, row.dkim, row.spf, row.header_from)
        if _is_server(row.source_ip, servers):
            e["ranges"].add((row.begin, row.end))

    ips = sorted({ip for e in per.values() for ip, _ in e["sources"]})
    names = reverse_names(db, config, ips, resolve=resolve, lock=lock)
    records = published_records(config, sorted(per))

    out_domains = []
    for d in sorted(per):
        e = per[d]
        groups: dict[str, Any] = {}
        for g in GROUPS:
            srcs = sorted(
                (s for (_, sg), s in e["sources"].items() if sg == g),
                key=lambda s: (-s.messages, s.ip),
            )
            for s in srcs:
                s.name = names.get(s.ip)
            groups[g] = {
                "messages": sum(s.messages for s in srcs),
                "dmarc_pass": sum(s.dmarc_pass for s in srcs),
                "dkim_fail": sum(s.dkim_fail for s in srcs),
                "sources": [s.as_dict() for s in srcs],
            }
        alerts = []
        own_fail = groups["this_server"]["dkim_fail"]
        if own_fail:
            alerts.append(
                f"{own_fail} message(s) from this server failed DKIM: something on the way"
                " breaks signatures (a relay, a footer, a re-encoding)"
            )
        own: dict[str, Any] = {"reported": groups["this_server"]["messages"], "signed": None}
        merged = merge_ranges(e["ranges"])
        if merged:
            signed = 0
            for lo, hi in merged:
                signed += locked(
                    queries.signed_for_domain,
                    db,
                    d,
                    datetime.fromtimestamp(lo, UTC).isoformat(),
                    datetime.fromtimestamp(hi + 1, UTC).isoformat(),
                )
            own.update(
                {
                    "from": datetime.fromtimestamp(merged[0][0], UTC).isoformat(),
                    "until": datetime.fromtimestamp(merged[-1][1] + 1, UTC).isoformat(),
                    "ranges": len(merged),
                    "signed": signed,
                }
            )
        name, record = records.get(d, (f"_dmarc.{d}", None))
        adv: Advice = advise(d, name, record, ready.get(d), suffixes.organisational(d))
        m = e["messages"]
        out_domains.append(
            {
                "domain": d,
                "messages": m,
                "dmarc_pass": e["dmarc_pass"],
                "pass_share": _share(e["dmarc_pass"], m),
                "spf_aligned_share": _share(e["spf_aligned"], m),
                "dkim_aligned_share": _share(e["dkim_aligned"], m),
                "dispositions": dict(sorted(e["dispositions"].items())),
                "published": e["published"],
                "record": record,
                "reporters": [
                    {"org_name": org, "report_ids": ids}
                    for org, ids in sorted(e["reporters"].items())
                ],
                "daily": [
                    {"day": day, "messages": v[0], "dmarc_pass": v[1]}
                    for day, v in sorted(e["daily"].items())
                ],
                "groups": groups,
                "own": own,
                "alerts": alerts,
                "readiness": _readiness_dict(ready.get(d)),
                "advice": adv.as_dict(),
            }
        )
    tls: dict[str, dict[str, Any]] = {}
    for t in locked(store.tls_policies, db, since=start, until=end, domain=domain):
        pkey = t["policy_domain"] or "(no policy domain)"
        agg = tls.setdefault(
            pkey,
            {
                "policy_domain": pkey,
                "policy_types": [],
                "successful": 0,
                "failed": 0,
                "failures": {},
            },
        )
        if t["policy_type"] not in agg["policy_types"]:
            agg["policy_types"].append(t["policy_type"])
        agg["successful"] += t["successful"]
        agg["failed"] += t["failed"]
        for kind, n in t["failures"].items():
            agg["failures"][kind] = agg["failures"].get(kind, 0) + n
    return {
        "since": start_iso,
        "until": now.isoformat(),
        "server": sorted(servers),
        "domains": out_domains,
        "tls": [tls[k] for k in sorted(tls)],
        "refused": locked(store.refused_count, db, start_iso),
    }


def _readiness_dict(r: Readiness | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "days": r.days,
        "ready_days": r.ready_days,
        "messages": r.messages,
        "pass_share": round(r.share, 4),
        "ready_share": r.ready_share,
        "own_dkim_failures": r.own_dkim_failures,
        "ready": r.ready,
    }


def as_text(summary: dict[str, Any]) -> str:
    lines = [
        f"reports since {summary['since'][:19]}Z; this server: {', '.join(summary['server']) or '(no [server].addresses)'}"
    ]
    labels = {
        "this_server": "this server",
        "authorised_elsewhere": "authorised elsewhere",
        "failing": "failing (neither SPF nor DKIM aligned)",
    }
    for d in summary["domains"]:
        lines.append("")
        lines.append(
            f"{d['domain']}: {d['messages']} message(s) reported, {d['pass_share']:.1%} pass DMARC"
            f" (SPF aligned {d['spf_aligned_share']:.1%}, DKIM aligned {d['dkim_aligned_share']:.1%})"
        )
        disp = ", ".join(f"{k} {v}" for k, v in d["dispositions"].items()) or "-"
        lines.append(f"  dispositions: {disp}")
        for r in d["reporters"]:
            ids = ", ".join(r["report_ids"][:5]) + (" ..." if len(r["report_ids"]) > 5 else "")
            lines.append(f"  reported by {r['org_name']}: {len(r['report_ids'])} report(s) ({ids})")
        if d["daily"]:
            lines.append(
                "  daily: "
                + "  ".join(
                    f"{x['day'][5:]} {x['dmarc_pass']}/{x['messages']}" for x in d["daily"][-14:]
                )
            )
        for g in GROUPS:
            grp = d["groups"][g]
            lines.append(
                f"  {labels[g]}: {grp['messages']} message(s), {grp['dmarc_pass']} pass"
                + (f", {grp['dkim_fail']} DKIM fail" if g == "this_server" else "")
            )
            shown = grp["sources"][:20]
            ip_w = max([15, *(len(s["ip"]) for s in shown)])
            for s in shown:
                name = (
                    s["name"] if s["name"] else ("(no name)" if s["name"] == "" else "(unresolved)")
                )
                lines.append(
                    f"    {s['ip']:<{ip_w}} {name[:36]:<36} {s['messages']:>7} msg"
                    f"  SPF-aligned {s['spf_aligned']:>6}  DKIM-aligned {s['dkim_aligned']:>6}"
                )
            if len(grp["sources"]) > 20:
                lines.append(f"    ... {len(grp['sources']) - 20} more")
        own = d["own"]
        if own["signed"] is not None:
            lines.append(
                f"  postwarden signed {own['signed']} message(s) for {d['domain']} over the reports'"
                f" date ranges; the reports cover {own['reported']} from this server"
            )
        for a in d["alerts"]:
            lines.append(f"  ALERT: {a}")
        adv = d["advice"]
        lines.append(f"  next step: {adv['message']}")
        if adv["record"]:
            lines.append(f"    {adv['record']}")
    for t in summary["tls"]:
        fails = ", ".join(f"{k} {v}" for k, v in sorted(t["failures"].items())) or "none"
        lines.append("")
        lines.append(
            f"TLS {t['policy_domain']} ({'/'.join(t['policy_types'])}): {t['successful']} successful,"
            f" {t['failed']} failed session(s); failures: {fails}"
        )
    if not summary["domains"] and not summary["tls"]:
        lines.append("no reports in this window")
    if summary["refused"]:
        lines.append(
            f"{summary['refused']} input(s) refused in this window (see `reports ingest`'s reasons)"
        )
    return "\n".join(lines)
