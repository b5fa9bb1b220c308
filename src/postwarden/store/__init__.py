"""SQLite: schema and migrations, the single writer, and the queries CLI and TUI share.

Its names are imported when first used: `from postwarden.store import records` (as every
command does) must not load the writer, and through the rate store the whole policy engine.
`postwarden reload` runs on the machine that carries the mail, and imports were nearly all
of its CPU (issue 21).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postwarden.store.db import open_db
    from postwarden.store.migrations import migrate
    from postwarden.store.writer import Writer

__all__ = ["Writer", "migrate", "open_db"]
_WHERE = {"Writer": "writer", "migrate": "migrations", "open_db": "db"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"postwarden.store.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'postwarden.store' has no attribute {name!r}")
