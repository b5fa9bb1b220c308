"""The suppression list, managed by hand (`postwarden suppression`, the TUI): the same
functions for both, every add and remove audited (in this server's database). With
[store].shared (`shared`, the RedisRateStore) the list itself is the one in Redis every server
shares; without it, this database's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlite_utils

from postwarden import audit
from postwarden.config import Config
from postwarden.config.models import is_domain
from postwarden.store import feedback as store

if TYPE_CHECKING:  # redis is imported only with [store].shared (feedback ingest runs without)
    from postwarden.store.shared import RedisRateStore


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


def suppression_list(
    db: sqlite_utils.Database, shared: RedisRateStore | None = None
) -> store.SuppressionList:
    """The list in force: the shared one with [store].shared, else this database's."""
    return shared.suppressions if shared is not None else store.LocalSuppressions(db)


def for_config(
    db: sqlite_utils.Database, config: Config, shared: RedisRateStore | None = None
) -> store.SuppressionList:
    """The list `config` names: `shared` if given, else the Redis [store].shared names (opened
    here), else this database's. So no caller writes SQLite while the servers share Redis."""
    if shared is None and config.daemon.store.shared:
        from postwarden.store.shared import open_shared

        shared = open_shared(config.daemon.store)
    return suppression_list(db, shared)


def add(
    db: sqlite_utils.Database,
    address: str,
    domain: str | None,
    note: str = "",
    shared: RedisRateStore | None = None,
) -> bool:
    """Suppress `address` for `domain` (None: every domain). False if already suppressed."""
    address, d = _check(address, domain)
    done = suppression_list(db, shared).suppress(
        address, d, datetime.now(UTC).isoformat(), "admin", "added by hand", note
    )
    if done:
        audit.record(db, "suppression.add", [f"{address} ({d or 'every domain'})"], note)
    return done


def remove(
    db: sqlite_utils.Database,
    address: str,
    domain: str | None,
    note: str = "",
    shared: RedisRateStore | None = None,
) -> int:
    """End the suppression of `address` for `domain` (None: every entry of the address)."""
    address, d = _check(address, domain)
    n = suppression_list(db, shared).unsuppress(
        address, d if domain is not None else None, datetime.now(UTC).isoformat(), note
    )
    if n:
        audit.record(db, "suppression.remove", [f"{address} ({d or 'every entry'})"], note)
    return n


def entries(
    db: sqlite_utils.Database, domain: str | None = None, shared: RedisRateStore | None = None
) -> list[dict[str, Any]]:
    return suppression_list(db, shared).entries(domain)
