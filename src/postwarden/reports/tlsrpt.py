"""SMTP TLS reports (RFC 8460): JSON, per policy domain the successful and failed sessions,
the failures by result type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from postwarden.reports.unpack import Refused, printable

MAX_POLICIES = 10_000


@dataclass
class TlsPolicy:
    policy_type: str
    policy_domain: str
    successful: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy_type": self.policy_type,
            "policy_domain": self.policy_domain,
            "successful": self.successful,
            "failed": self.failed,
            "failures": self.failures,
        }


@dataclass
class TlsReport:
    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    policies: list[TlsPolicy]

    @property
    def domain(self) -> str:
        return self.policies[0].policy_domain if self.policies else ""


def _time(value: Any, what: str) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < 2**40:
            raise Refused(f"{what} is out of range: {value!r:.40}")
        return int(value)
    if not isinstance(value, str) or not value:
        raise Refused(f"a TLS report without {what}")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"{what} is not a time: {value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp())
    except (OverflowError, ValueError, OSError):
        raise Refused(f"{what} is out of range: {value[:40]!r}") from None


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return max(0, min(int(value), 10**12))
    if isinstance(value, str) and value.strip().isdigit():
        return min(int(value.strip()), 10**12)
    return 0


def _str(value: Any) -> str:
    return printable(value) if isinstance(value, str) else ""


def parse(data: bytes) -> TlsReport:
    try:
        doc = json.loads(data.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as exc:
        raise Refused(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Refused("JSON, but not a TLS report (not an object)")
    if "organization-name" not in doc and "policies" not in doc:
        raise Refused("JSON, but not a TLS report (no organization-name, no policies)")
    org = _str(doc.get("organization-name"))
    report_id = _str(doc.get("report-id"))
    if not org or not report_id:
        raise Refused("a TLS report without organization-name or report-id")
    dates = doc.get("date-range")
    if not isinstance(dates, dict):
        raise Refused("a TLS report without date-range")
    begin = _time(dates.get("start-datetime"), "date-range start-datetime")
    end = _time(dates.get("end-datetime"), "date-range end-datetime")
    raw_policies = doc.get("policies")
    if not isinstance(raw_policies, list):
        raise Refused("a TLS report without a policies list")
    if len(raw_policies) > MAX_POLICIES:
        raise Refused(f"{len(raw_policies)} policies (at most {MAX_POLICIES})")
    policies = []
    for entry in raw_policies:
        if not isinstance(entry, dict):
            continue
        pol = entry.get("policy") if isinstance(entry.get("policy"), dict) else {}
        summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
        failures: dict[str, int] = {}
        details = entry.get("failure-details")
        for d in details if isinstance(details, list) else []:
            if isinstance(d, dict):
                kind = _str(d.get("result-type"))[:64] or "unknown"
                failures[kind] = failures.get(kind, 0) + _count(d.get("failed-session-count"))
        policies.append(
            TlsPolicy(
                policy_type=_str(pol.get("policy-type"))[:64] or "unknown",  # type: ignore[union-attr]
                policy_domain=_str(pol.get("policy-domain")).lower().rstrip(".")[:253],  # type: ignore[union-attr]
                successful=_count(summary.get("total-successful-session-count")),  # type: ignore[union-attr]
                failed=_count(summary.get("total-failure-session-count")),  # type: ignore[union-attr]
                failures=failures,
            )
        )
    return TlsReport(
        org_name=org[:200],
        email=_str(doc.get("contact-info"))[:200],
        report_id=report_id[:200],
        begin=min(begin, end),
        end=max(begin, end),
        policies=policies,
    )
