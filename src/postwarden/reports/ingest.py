"""`postwarden reports ingest`: what arrives -> the reports inside -> stored once per
(kind, organisation, report id), or stored as refused with the reason."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from postwarden.reports import dmarc, tlsrpt
from postwarden.reports.unpack import MAX_INPUT, Refused, documents
from postwarden.store import reports as store


@dataclass(frozen=True)
class Outcome:
    """One report found in an input: stored (new or a duplicate), or refused."""

    status: str  # stored | duplicate | refused
    kind: str = ""  # dmarc | tlsrpt
    org_name: str = ""
    report_id: str = ""
    domain: str = ""
    rows: int = 0
    reason: str = ""
    recovered: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.status == "refused":
            return f"refused: {self.reason}"
        what = "DMARC aggregate" if self.kind == "dmarc" else "TLS"
        verb = "stored" if self.status == "stored" else "already stored"
        extra = " (broken XML, read by the recovering pass)" if self.recovered else ""
        return (
            f"{verb}: {what} report {self.report_id!r} from {self.org_name} for {self.domain},"
            f" {self.rows} row(s){extra}"
        )


def _record(
    kind: str,
    rep: dmarc.Aggregate | tlsrpt.TlsReport,
    policy: str,
    raw: bytes,
    now: datetime,
    source: str,
) -> dict[str, object]:
    """The reports row of either kind: who sent it, what it covers, the raw report gzipped."""
    return {
        "kind": kind,
        "org": rep.org_name.lower(),
        "report_id": rep.report_id,
        "org_name": rep.org_name,
        "email": rep.email,
        "domain": rep.domain,
        "begin": rep.begin,
        "end": rep.end,
        "policy": policy,
        "received_at": now.isoformat(),
        "source": source,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "raw_size": len(raw),
        "raw": gzip.compress(raw, 6, mtime=0),
    }


def _store_aggregate(
    db: sqlite_utils.Database, rep: dmarc.Aggregate, raw: bytes, now: datetime, source: str
) -> Outcome:
    record = _record("dmarc", rep, json.dumps(rep.policy, sort_keys=True), raw, now, source)
    _, new = store.insert_report(db, record, [r.as_dict() for r in rep.rows], [])
    return Outcome(
        "stored" if new else "duplicate",
        "dmarc",
        rep.org_name,
        rep.report_id,
        rep.domain,
        len(rep.rows),
        recovered=rep.recovered,
    )


def _store_tls(
    db: sqlite_utils.Database, rep: tlsrpt.TlsReport, raw: bytes, now: datetime, source: str
) -> Outcome:
    record = _record("tlsrpt", rep, "{}", raw, now, source)
    _, new = store.insert_report(db, record, [], [p.as_dict() for p in rep.policies])
    return Outcome(
        "stored" if new else "duplicate",
        "tlsrpt",
        rep.org_name,
        rep.report_id,
        rep.domain,
        len(rep.policies),
    )


def read_reports(data: bytes) -> list[tuple[bytes, dmarc.Aggregate | tlsrpt.TlsReport]]:
    """Every report in `data`, parsed (no database): raises Refused when there is none."""
    if len(data) > MAX_INPUT:
        raise Refused(f"larger than {MAX_INPUT // (1024 * 1024)} MiB: not a report")
    found: list[tuple[bytes, dmarc.Aggregate | tlsrpt.TlsReport]] = []
    problems: list[str] = []
    for doc in documents(data):
        try:
            parsed = dmarc.parse(doc.data) if doc.kind == "xml" else tlsrpt.parse(doc.data)
        except Refused as exc:
            problems.append(str(exc))
            continue
        found.append((doc.data, parsed))
    if not found:
        raise Refused(problems[0] if problems else "no report in it")
    return found


def ingest(
    db: sqlite_utils.Database,
    data: bytes,
    *,
    source: str = "stdin",
    now: datetime | None = None,
    retention_days: int = 90,
) -> list[Outcome]:
    """Store every report in `data`; a refusal is stored too (the reason, never the content).
    sqlite3 errors (a locked database) propagate: the caller says "retry later"."""
    now = now or datetime.now(UTC)
    try:
        reports = read_reports(data)
    except Refused as exc:
        reason = str(exc)
        store.insert_refused(
            db, now.isoformat(), source, reason, len(data), hashlib.sha256(data).hexdigest()
        )
        return [Outcome("refused", reason=reason)]
    out = []
    for raw, rep in reports:
        if isinstance(rep, dmarc.Aggregate):
            out.append(_store_aggregate(db, rep, raw, now, source))
        else:
            out.append(_store_tls(db, rep, raw, now, source))
    cutoff = now - timedelta(days=retention_days)
    store.prune(db, cutoff.isoformat())
    return out
