"""SQLite: schema and migrations, the single writer, and the queries CLI and TUI share."""

from postwarden.store.db import open_db
from postwarden.store.migrations import migrate
from postwarden.store.writer import Writer

__all__ = ["Writer", "migrate", "open_db"]
