"""The suppression list, managed by hand (`postwarden suppression`, the TUI): the same
functions for both, every add and remove audited."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from postwarden import audit
from postwarden.config.models import is_domain
from postwarden.store import feedback as store


class BadEntry(ValueError):
    pass


def _check(address: str, domain: str | None) -> tuple[str, str]:
    address = address.strip().removeprefix("<").removesuffix(">").lower()
    local, at, dom = address.rpartition("@")
    if not at or not local or not is_domain(dom) or any(c.isspace() for c in address):
        raise BadEntry(f"{address!r} is not a mail address (write user@example.com)")
    d = (domain or "").strip().lower().rstrip(".")
    if d and not is_domain(d):
        raise BadEntry(f"--domain {domain!r} is not a domain name")
    return address, d


def add(db: sqlite_utils.Database, address: str, domain: str | None, note: str = "") -> bool:
    """Suppress `address` for `domain` (None: every domain). False if already suppressed."""
    address, d = _check(address, domain)
    done = store.suppress(
        db, address, d, datetime.now(UTC).isoformat(), "admin", "added by hand", note
    )
    if done:
        audit.record(db, "suppression.add", [f"{address} ({d or 'every domain'})"], note)
    return done


def remove(db: sqlite_utils.Database, address: str, domain: str | None, note: str = "") -> int:
    """End the suppression of `address` for `domain` (None: every entry of the address)."""
    address, d = _check(address, domain)
    n = store.unsuppress(
        db, address, d if domain is not None else None, datetime.now(UTC).isoformat(), note
    )
    if n:
        audit.record(db, "suppression.remove", [f"{address} ({d or 'every entry'})"], note)
    return n


def entries(db: sqlite_utils.Database, domain: str | None = None) -> list[dict[str, Any]]:
    return store.suppressions(db, domain)
