"""Who did what to the quarantine and the locks, and when."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

import sqlite_utils

from postwarden.store import records


def actor() -> str:
    """The admin behind the command: the sudo user when run through sudo."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def record(
    db: sqlite_utils.Database, action: str, targets: list[str], note: str = "", who: str = ""
) -> None:
    records.add_audit(db, datetime.now(UTC).isoformat(), who or actor(), action, targets, note)
