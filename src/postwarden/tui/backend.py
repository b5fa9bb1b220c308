"""What the TUI does, with no UI in it: the same functions the CLI calls, over the same
database and the same Postfix. Screens call these from worker threads, never the UI thread.

One lock serialises the SQLite connection: Python's sqlite3 connection is not safe to use
from two threads at once, and the screens' workers are threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postwarden import EX_CONFIG, control, dnsdoctor, policyedit, quarantine, schedule, senders
from postwarden.config import Config, ConfigError, load_config
from postwarden.config.loader import Problem
from postwarden.store import migrate, open_db
from postwarden.store.daemon_state import writer_health
from postwarden.store.queries import decisions, point_in_time
from postwarden.store.shared import open_shared

PAGE = 100  # decision rows a page
HELD_PAGE = 200  # held messages a page

FILTER_KEYS = ("sender", "domain", "action", "reason", "since", "until")


@dataclass
class DecisionFilter:
    sender: str = ""
    domain: str = ""
    action: str = ""
    reason: str = ""
    since: str = ""
    until: str = ""
    text: str = ""

    @classmethod
    def parse(cls, query: str) -> DecisionFilter:
        """ "sender:alice@example.com action:reject since:2h invoice": key:value terms, the
        rest free text. An unknown key is an error that lists the known ones."""
        out = cls()
        words = []
        for term in query.split():
            key, sep, value = term.partition(":")
            if sep and key in FILTER_KEYS and value:
                setattr(out, key, value)
            elif sep and key.isalpha() and key not in FILTER_KEYS and value:
                raise ValueError(f'unknown filter "{key}:"; use {", ".join(FILTER_KEYS)}')
            else:
                words.append(term)
        out.text = " ".join(words)
        return out

    def __str__(self) -> str:
        parts = [f"{k}:{getattr(self, k)}" for k in FILTER_KEYS if getattr(self, k)]
        return " ".join(parts + ([self.text] if self.text else []))


@dataclass(frozen=True)
class Saved:
    """A policy edit's outcome: written or not, then the reload's exit code and message."""

    written: bool
    code: int
    message: str


class Backend:
    def __init__(self, config_path: str | Path, now: Callable[[], datetime] | None = None) -> None:
        self.config_path = Path(config_path)
        self.now = now or (lambda: datetime.now(UTC))
        self.config: Config = load_config(self.config_path, validate_keys=False)
        self.lock = threading.Lock()
        self.lost_rows = 0
        self.db = open_db(self.config.daemon.store.database)
        migrate(self.db)
        self.shared = open_shared(self.config.daemon.store)  # [store].shared: Redis, or None

    @property
    def postfix_dir(self) -> str:
        return self.config.daemon.postfix.config_directory

    # ---- decisions ----------------------------------------------------------------------------

    def decisions(
        self,
        flt: DecisionFilter,
        *,
        before_id: int | None = None,
        after_id: int = 0,
        limit: int = PAGE,
    ) -> list[dict[str, Any]]:
        """Newest first."""
        now = self.now()
        with self.lock:
            rows = decisions(
                self.db,
                sender=flt.sender or None,
                domain=flt.domain or None,
                action=flt.action or None,
                reason=flt.reason or None,
                since=point_in_time(flt.since, now) if flt.since else None,
                until=point_in_time(flt.until, now) if flt.until else None,
                text=flt.text or None,
                before_id=before_id,
                after_id=after_id,
                limit=limit,
            )
            # Decisions the daemon could not record: shown on the Decisions screen's status line.
            self.lost_rows = sum(h.rows_dropped + h.rows_failed for h in writer_health(self.db))
        return list(reversed(rows))

    # ---- quarantine ---------------------------------------------------------------------------

    def held(self) -> list[quarantine.Held]:
        """Every held message with its decision, oldest first (one postqueue call)."""
        messages = quarantine.held(self.postfix_dir)
        with self.lock:
            items = quarantine.with_decisions(self.db, messages)
            # streams.md: paced and warm-up holds say when they are due
            schedule.annotate(self.db.conn, self.config.policy, self.now(), items)
            return items

    def show(self, queue_id: str) -> str:
        return quarantine.show(self.postfix_dir, queue_id)

    def act(
        self, action: str, queue_ids: list[str], sender: str = "", note: str = ""
    ) -> quarantine.Outcome:
        with self.lock:
            return quarantine.act(
                self.db, self.postfix_dir, action, queue_ids, sender=sender, note=note or "tui"
            )

    # ---- senders ------------------------------------------------------------------------------

    def senders(self) -> list[senders.SenderStatus]:
        with self.lock:
            return senders.statuses(self.db, self.config.policy, self.now(), shared=self.shared)

    def unlock(self, identity: str, note: str) -> bool:
        with self.lock:
            return senders.unlock(self.db, identity, note, shared=self.shared)

    # ---- domains ------------------------------------------------------------------------------

    def domains(self) -> list[dict[str, Any]]:
        """Each hosted domain with its keys and its latest dns-check."""
        with self.lock:
            checks = dnsdoctor.latest(self.db)
        out = []
        for name in sorted(self.config.policy.domains):
            entry = self.config.policy.domains[name]
            run_at, findings = checks.get(name, ("", []))
            out.append(
                {
                    "domain": name,
                    "include_subdomains": entry.include_subdomains,
                    "keys": [
                        {
                            "selector": k.selector,
                            "active": k.active,
                            "algorithm": next(
                                (
                                    f"rsa-{lk.bits}" if lk.algorithm == "rsa" else lk.algorithm
                                    for lk in self.config.keys.get(name, [])
                                    if lk.selector == k.selector
                                ),
                                "?",
                            ),
                        }
                        for k in entry.keys
                    ],
                    "checked_at": run_at,
                    "findings": findings,
                }
            )
        return out

    def dns_check(
        self, domains: list[str] | None, progress: Callable[[int, int, str], None]
    ) -> dnsdoctor.Report:
        report = dnsdoctor.run(self.config, domains, now=self.now(), progress=progress)
        if not report.unreachable:
            with self.lock:
                dnsdoctor.record(self.db, report)
        return report

    # ---- policy -------------------------------------------------------------------------------

    def policy_entries(self) -> list[policyedit.Entry]:
        return policyedit.entries(self.config.daemon.policies)

    def policy_files(self) -> list[Path]:
        return policyedit.policy_files(self.config.daemon.policies)

    def check_edit(self, file: Path, text: str) -> list[Problem]:
        try:
            policyedit.validate(self.config_path, file, text)
        except ConfigError as exc:
            return exc.problems
        return []

    def save_and_reload(self, file: Path, text: str) -> Saved:
        """Validate, write, reload. Refused (78) with the loader's problems, and nothing
        written, when the daemon would refuse it."""
        try:
            config = policyedit.validate(self.config_path, file, text)
        except ConfigError as exc:
            return Saved(False, EX_CONFIG, "\n".join(str(p) for p in exc.problems))
        policyedit.save(file, text)
        self.config = config  # what was just checked is what is now on disk
        return Saved(True, *control.reload(config, wait=10.0))
