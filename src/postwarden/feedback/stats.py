"""Complaint rates per From domain (feedback.md): complaints (abuse, fraud, virus) over the
outbound messages postwarden accepted for that domain, over the last 7 and 30 days, and the
alert to [rate].notify for a domain above [feedback].alert_rate (7 days), once a day."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlite_utils

from postwarden.config import Config
from postwarden.feedback import suppression
from postwarden.policy.address import header_from
from postwarden.store import feedback as store

if TYPE_CHECKING:  # redis is imported only with [store].shared
    from postwarden.store.shared import RedisRateStore

WINDOWS = (7, 30)


def rates(
    db: sqlite_utils.Database,
    config: Config,
    now: datetime | None = None,
    domain: str | None = None,
    shared: RedisRateStore | None = None,
) -> list[dict[str, Any]]:
    """One row per From domain with complaints or delivered mail (hosted domains always); its
    suppressed count from the list in force ([store].shared: Redis)."""
    now = now or datetime.now(UTC)
    alert_rate = config.policy.feedback.alert_rate
    per: dict[str, dict[str, Any]] = {}

    def row(d: str) -> dict[str, Any]:
        if d not in per:
            per[d] = {"domain": d, "hosted": config.policy.hosted_domain(d) is not None}
            for days in WINDOWS:
                per[d][f"{days}d"] = {"complaints": 0, "delivered": 0, "rate": 0.0}
        return per[d]

    for d in config.policy.domains:
        row(d)
    for days in WINDOWS:
        since = (now - timedelta(days=days)).isoformat()
        for d, n in store.complaints_since(db, since).items():
            row(d)[f"{days}d"]["complaints"] += n
        for header, n in store.delivered_since(db, since):
            d = header_from([header]).domain.lower() if header else ""
            if d:
                row(d)[f"{days}d"]["delivered"] += n
    suppressed: dict[str, int] = {}
    for s in suppression.for_config(db, config, shared).entries():
        suppressed[s["domain"]] = suppressed.get(s["domain"], 0) + 1
    out = []
    for d, r in sorted(per.items()):
        if domain is not None and d != domain.lower():
            continue
        for days in WINDOWS:
            w = r[f"{days}d"]
            w["rate"] = (
                round(w["complaints"] / w["delivered"], 6)
                if w["delivered"]
                else (1.0 if w["complaints"] else 0.0)
            )
        r["suppressed"] = suppressed.get(d, 0)
        r["above_alert_rate"] = r["7d"]["rate"] > alert_rate and r["7d"]["complaints"] > 0
        out.append(r)
    return out


def alerts(
    db: sqlite_utils.Database,
    config: Config,
    rows: list[dict[str, Any]],
    now: datetime,
    send: Callable[[list[str], str, str], None],
) -> list[str]:
    """Mail [rate].notify about each domain above the alert rate, once per day. Returns the
    domains alerted."""
    notify = list(config.policy.rate.notify)
    done = []
    for r in rows:
        if not r["above_alert_rate"] or not notify:
            continue
        last = store.last_alert(db, r["domain"])
        if last is not None and now - datetime.fromisoformat(last) < timedelta(days=1):
            continue
        w = r["7d"]
        send(
            notify,
            f"postwarden: {r['domain']} complaint rate {w['rate']:.3%} over 7 days",
            f"{r['domain']}: {w['complaints']} complaint(s) over {w['delivered']} message(s) "
            f"delivered in the last 7 days ({w['rate']:.3%}), above [feedback].alert_rate "
            f"{config.policy.feedback.alert_rate:.3%}.\nGmail and Yahoo refuse bulk senders at "
            "0.3 %. See `postwarden feedback stats` and `postwarden suppression list "
            f"--domain {r['domain']}`.\n",
        )
        store.alert_sent(db, r["domain"], now.isoformat())
        done.append(r["domain"])
    return done
